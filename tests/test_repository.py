"""Repository hygiene: no merge-conflict markers left in any source or documentation file."""

import os
from pathlib import Path

ROOT = Path(__file__).parents[1]
TEXT = {".py", ".md", ".yaml", ".yml", ".toml", ".txt", ".cfg"}
SKIP = {".git", ".venv", "demo_out", "__pycache__", ".pytest_cache", ".ruff_cache"}


def conflict_markers(root: Path) -> list[str]:
    found = []
    for folder, subfolders, files in os.walk(root):
        subfolders[:] = [d for d in subfolders if d not in SKIP]  # prune: never walk the virtualenv
        for name in files:
            path = Path(folder) / name
            if path.suffix not in TEXT:
                continue
            for i, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
                if line.startswith(("<<<<<<< ", ">>>>>>> ")) or line == "=======":
                    found.append(f"{path.relative_to(root)}:{i}")
    return found


def test_no_conflict_markers(tmp_path):
    (tmp_path / "README.md").write_text("text\n<<<<<<< HEAD\nours\n=======\ntheirs\n>>>>>>> main\n")
    assert conflict_markers(tmp_path) == ["README.md:2", "README.md:4", "README.md:6"]  # the check sees them
    found = conflict_markers(ROOT)
    assert not found, f"merge-conflict markers left in: {', '.join(found)}"
