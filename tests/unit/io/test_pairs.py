"""The one reader of the test pairs file: ids, bins and mask names stay text; a bad file is one line naming it."""
import re
from pathlib import Path

import pytest

from strdiffusion.io.errors import UserError
from strdiffusion.io.pairs import read_pairs

PACKAGE = Path(__file__).resolve().parents[3] / "strdiffusion"


def test_pairs_keep_ids_bins_and_masks_as_text(tmp_path):
    csv = tmp_path / "pairs.csv"
    csv.write_text("image_id,bin,mask,hole_ratio\n0007,10-20,masks/test/10-20/0001.png,0.125\nNA,1,m.png,0.5\n")
    pairs = read_pairs(csv)
    assert pairs["image_id"].tolist() == ["0007", "NA"] and pairs["bin"].tolist() == ["10-20", "1"]
    assert pairs["hole_ratio"].tolist() == [0.125, 0.5]


def test_pairs_file_missing_unreadable_or_without_columns_is_one_line(tmp_path):
    with pytest.raises(UserError, match=r"nope\.csv: pairs file not found; run the masks stage first"):
        read_pairs(tmp_path / "nope.csv")
    (tmp_path / "ids.csv").write_text("image_id,bin\n1,10-20\n")
    with pytest.raises(UserError, match=r"ids\.csv: missing column\(s\) mask"):
        read_pairs(tmp_path / "ids.csv")
    assert read_pairs(tmp_path / "ids.csv", needs=("image_id", "bin"))["image_id"].tolist() == ["1"]


def test_pairs_file_has_one_reader_in_the_package():
    readers = [str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py")
               if re.search(r"read_csv\([^)]*pairs", p.read_text())]
    assert readers == ["io/pairs.py"]
