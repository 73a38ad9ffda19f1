"""--save_results writes results.json by streaming the evaluator's compact per-image arrays."""
import json

import numpy as np

from engine import write_coco_results


def test_streamed_results_are_a_coco_list(tmp_path):
    dets = {7: np.array([[1.0, 2.0, 3.0, 4.0, 0.912345, 5.0]], dtype=np.float32),
            3: np.zeros((0, 6), dtype=np.float32),
            2: np.array([[0.5, 0.5, 1.0, 1.0, 0.1, 1.0], [0, 0, 2, 2, 0.2, 2]], dtype=np.float32)}
    path = tmp_path / "results.json"
    assert write_coco_results(dets, str(path)) == 3
    out = json.loads(path.read_text())
    assert [d["image_id"] for d in out] == [2, 2, 7]
    assert out[-1] == {"image_id": 7, "category_id": 5, "bbox": [1.0, 2.0, 3.0, 4.0], "score": 0.91234}
    assert not (tmp_path / "results.json.tmp").exists()
    write_coco_results({}, str(path))
    assert json.loads(path.read_text()) == []
