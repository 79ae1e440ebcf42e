"""The layout the code keeps (issue 21): the Serve shells in `deployments/` stay thin, their
logic in the pure core or in small modules beside them."""

from pathlib import Path

DEPLOYMENTS = Path(__file__).resolve().parent.parent / "deployments"
SHELL_LINES = 400


def test_no_file_in_deployments_is_over_400_lines() -> None:
    sizes = {path.name: len(path.read_text().splitlines()) for path in DEPLOYMENTS.glob("*.py")}
    assert sizes and {name: lines for name, lines in sizes.items() if lines > SHELL_LINES} == {}
