"""The pieces of the real-document benchmark that decide its figures: where a gold answer is taken
from (scripts/realdocs.py) and what the naive answer is (bench/quality.py); and the rotated int8
graph that scripts/int8_ceiling.py measures."""

import importlib.util
import sys
from pathlib import Path

from llmops_dagster.core.baseline import Bm25Baseline, Window

from helpers import REPO


def _module(path: Path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(path.stem, module)
    spec.loader.exec_module(module)
    return module


def test_the_gold_answer_of_a_pdf_question_is_the_first_sentence_under_its_heading() -> None:
    first_sentence_after = _module(REPO / "scripts" / "realdocs.py").first_sentence_after
    page = (
        "CHAPTER 1. DEFINITIONS 1.2. WHAT IS DEBIAN?\r\nthe end of an earlier answer.\r\n"
        "1.3 OK, now I know what Debian is... what is Linux?!\r\nIn short, Linux is the kernel of a Unix-like op\ufffeerating\r\n"
        "system. It was originally designed for 386 PCs.\r\n"
    )
    heading = "OK, now I know what Debian is... what is Linux?!"
    assert first_sentence_after(heading, page) == "In short, Linux is the kernel of a Unix-like operating system."
    assert first_sentence_after("What is not on this page?", page) is None
    assert first_sentence_after("Last?", "Last? The only sentence.") == "The only sentence."


def test_the_naive_answer_is_the_top_windows_sentence_with_most_question_words() -> None:
    naive_answer = _module(REPO / "bench" / "quality.py").naive_answer
    windows = [
        Window("w1", "a.pdf", 1, "Rollback is cheap. The rollback command moves the champion alias back to the previous version.", ()),
        Window("w2", "b.pdf", 2, "Chunks overlap by 32 tokens. Overlap keeps sentences whole.", ()),
    ]
    with Bm25Baseline(windows) as bm25:
        assert naive_answer(bm25, "Which command moves the champion alias back?") == (
            "The rollback command moves the champion alias back to the previous version."
        )
        assert naive_answer(bm25, "zebra") == ""  # nothing retrieved: no answer


def test_a_rotated_int8_graph_rounds_an_outlier_channel_better_than_the_recipe(tmp_path) -> None:
    """scripts/int8_ceiling.py --rotated: turning the input and the weight by the same orthogonal
    block-Hadamard matrix leaves the product as it was, and spreads one huge channel over its block,
    so the rest of the row is no longer rounded on the outlier's coarse step."""
    import numpy as np
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from llmops_dagster.core import quantization

    ceiling = _module(REPO / "scripts" / "int8_ceiling.py")
    turn = ceiling.hadamard(64, 16)
    assert np.allclose(turn @ turn.T, np.eye(64))
    assert all(not turn[i : i + 16, j : j + 16].any() for i in range(0, 64, 16) for j in range(0, 64, 16) if i != j), "block-diagonal"

    rng = np.random.default_rng(3)
    fp32 = tmp_path / "linear.onnx"
    weight = rng.standard_normal((64, 24)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="linear")],
        "linear",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "tokens", 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "tokens", 24])],
        [numpy_helper.from_array(weight, "w")],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(fp32))
    x = rng.standard_normal((2, 30, 64)).astype(np.float32)
    x[..., 5] *= 60  # BERT's hidden states carry a few channels like this one
    ranges = quantization.calibrate(fp32, [{"x": x}])
    reference = x @ weight

    def error(path) -> float:  # noqa: ANN001
        got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
        return float(np.square(got - reference).mean() / np.square(reference).mean())

    quantization.quantize(fp32, ranges, tmp_path / "recipe.onnx", quantization.weight_levels())
    ceiling.rotated_graph(fp32, ranges, tmp_path / "rotated.onnx", 16)
    assert "MatMul" not in {node.op_type for node in onnx.load(str(tmp_path / "rotated.onnx")).graph.node if node.name == "linear"}
    assert error(tmp_path / "rotated.onnx") < 1e-4, "the rotation was not undone: the product should be fp32's"
    assert error(tmp_path / "rotated.onnx") < 0.5 * error(tmp_path / "recipe.onnx")
