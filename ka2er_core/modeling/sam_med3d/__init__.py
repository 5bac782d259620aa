"""SAM-Med3D (uni-medical/SAM-Med3D, the ``vit_b_ori`` model of ``sam_med3d_turbo.pth``), our own code.

Same architecture and the same state-dict names and shapes as the published checkpoint, so its weights
load unchanged: a ViT-B image encoder on 128^3 crops (16^3 patches -> 8^3 tokens, 768 wide, 12 blocks
with decomposed relative positions, a 384-wide neck), a prompt encoder (random Fourier features of
points, positive/negative/padding embeddings, the previous mask at 1/4 resolution as a dense prompt)
and a two-way-transformer mask decoder with two 3D up-convolutions (to 1/4 of the crop's resolution)
and an IoU head.

Frames: SAM-Med3D was trained on torchio tensors, whose axes are (x, y, z) = (i, j, k) of the image,
and takes points as (x, y, z) indices into them. Our crops are arrays in (k, j, i) order with points in
(i, j, k). :class:`SamMed3D` transposes the image, the mask prompt and the logits between the two, so
the anatomy reaches the encoder in the orientation it was trained on and our (i, j, k) points are
already in SAM-Med3D's order.
"""

from .config import TYPE, SamMed3DConfig
from .image_encoder import EncoderBlock, FeedForward, GridAttention, ImageEncoder3D, PatchEmbed
from .mask_decoder import MaskDecoder3D, TokenAttention, TwoWayBlock, TwoWayTransformer3D
from .model import MASK_LOGIT, SamMed3D
from .prompt_encoder import FourierFeatures, PromptEncoder3D

__all__ = ["EncoderBlock", "FeedForward", "FourierFeatures", "GridAttention", "ImageEncoder3D",
           "MASK_LOGIT", "MaskDecoder3D", "PatchEmbed", "PromptEncoder3D", "SamMed3D",
           "SamMed3DConfig", "TYPE", "TokenAttention", "TwoWayBlock", "TwoWayTransformer3D"]
