"""A one-photo dataset in darknet layout (matplotlib's Grace Hopper portrait, 512x600) with boxes around the
person and the tie, under any class names: for tests of the COCO model on a user's classes."""

import shutil
from pathlib import Path

# (x1, y1, x2, y2) in pixels of the 512x600 photo
PERSON_BOX = (20, 20, 500, 600)
TIE_BOX = (214, 416, 292, 539)


def photo_set(root: Path, photo: Path, names: list[str], boxes: dict[int, tuple] | None = None) -> Path:
    """obj.data of `photo` alone (train and valid lists) with classes `names`; `boxes`: class id -> box
    (default: class 0 the person, class 1 the tie when there are two names)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "images").mkdir(exist_ok=True)
    image = root / "images" / "hopper.jpg"
    shutil.copyfile(photo, image)
    boxes = boxes if boxes is not None else {0: PERSON_BOX, **({1: TIE_BOX} if len(names) > 1 else {})}
    rows = [f"{c} {(x1 + x2) / 1024:.6f} {(y1 + y2) / 1200:.6f} {(x2 - x1) / 512:.6f} {(y2 - y1) / 600:.6f}"
            for c, (x1, y1, x2, y2) in boxes.items()]
    image.with_suffix(".txt").write_text("\n".join(rows) + "\n")
    (root / "obj.names").write_text("\n".join(names) + "\n")
    (root / "train.txt").write_text(f"{image}\n")
    (root / "valid.txt").write_text(f"{image}\n")
    data = root / "obj.data"
    data.write_text(f"classes = {len(names)}\ntrain = {root / 'train.txt'}\nvalid = {root / 'valid.txt'}\n"
                    f"names = {root / 'obj.names'}\n")
    return data
