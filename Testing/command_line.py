"""What the ``ka2er`` command prints on bad input: one line, no traceback."""


def one_error_line(capsys) -> str:
    """The one line ``ka2er`` wrote to stderr (``ka2er: error: ...``); nothing else on it, and no
    traceback anywhere."""
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ka2er: error: "), captured.err
    assert "Traceback" not in captured.err + captured.out
    return lines[0]
