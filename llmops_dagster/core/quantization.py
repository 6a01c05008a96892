"""Row-wise int8 for the CPU: an ONNX Runtime graph whose vectors do not depend on the batch.

torch's dynamic quantisation scales each activation by the range of the whole batch, so a text's
vector moves with the other texts (and the padding) beside it. Here every weight MatMul quantises
its input one token row at a time: the row's scale is its own largest magnitude, computed in the
graph, so a row's integers depend on that row alone, and each row uses the full int8 range instead
of one calibrated step shared by every token. The MatMul then runs as ``MatMulIntegerToFloat`` with
per-output-channel int8 weights. A GELU's output, which never falls below ``GELU_FLOOR``, is lifted
by that floor and quantised unsigned, so its rows get all 256 levels instead of the half a
symmetric range leaves them; the lift comes back out through the bias of the MatMul's reader.
Attention scores, softmax, LayerNorm, GELU and the embeddings stay in float32, where int8 costs
quality and saves little time.

The graph is built once per model fingerprint, recipe and weight levels, under ``cache_root()``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

# Bump when export, calibration or graph surgery changes: cached graphs and verdicts are keyed by it.
RECIPE = "ort-rowwise-int8-v3"
INPUTS = ("input_ids", "attention_mask", "token_type_ids")
# SmoothQuant share: with row-wise scales, 0.5 kept the most of fp32's top-10 on MiniLM (sample corpus,
# of 0, 0.3, 0.5, 0.7 and 0.85); a share chosen per layer gained nothing measurable.
SMOOTHING = 0.5
# Symmetric row scale: a row's largest magnitude maps to 127, stored as uint8 around zero point 128.
ACTIVATION_LEVELS = 127
ACTIVATION_ZERO = 128
# Unsigned row scale, for inputs with a known floor: the row's largest value maps to 255, zero point 0.
UNSIGNED_LEVELS = 255
# GELU's minimum is -0.16997 (at x = -0.75); ORT's fused GELU ops all keep it.
GELU_FLOOR = 0.17
FLOORS = {"Gelu": GELU_FLOOR, "BiasGelu": GELU_FLOOR, "FastGelu": GELU_FLOOR, "Relu": 0.0}
# Weights: without VNNI, ORT's u8 x s8 kernel (VPMADDUBSW) adds pairs of products in a saturating
# int16, and 2 * 255 * 63 stays below 2**15 where 127 does not, so those CPUs get 7-bit weights
# (int8 x int8 avoids the saturation but runs about 8x slower on AVX2, uint8 x uint8 about 1.4x
# slower). VNNI (VPDPBUSD) and AMX add in int32, so there the weights use all 8 bits, which halves
# the int8 graph's distance from fp32 (mean cosine error 2.0e-3 -> 1.0e-3 on the Debian FAQ PDF).
SATURATING_WEIGHT_LEVELS = 63
WEIGHT_LEVELS = 127
VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")

# The gate's probe: prose paragraphs of at least this many words, this many of them.
PROBE_PASSAGES = 200
PROBE_MIN_WORDS = 25

# Fixed calibration texts: short queries and chunk-length passages, the two shapes the index embeds.
CALIBRATION = (
    "How do I roll back a release in production?",
    "What does cosine similarity measure?",
    "Which file types can be ingested?",
    "Where are the model artifacts stored?",
    "Why did the nightly job fail?",
    "The cat slept on a warm windowsill all afternoon.",
    "Zürich, café, naïve — ünïcödé text with accents and dashes.",
    "x",
    "ERROR 503: upstream timed out after 30 s (retry 3/5) at 2024-03-01T12:00:00Z",
    "def embed(texts: list[str]) -> np.ndarray: return model.encode(texts, normalize=True)",
    "Quarterly revenue grew 12% to $4.2 billion, driven by cloud subscriptions in Europe and Asia.",
    "Add two cups of flour, a pinch of salt and the melted butter, then knead for ten minutes.",
    "The treaty was signed in 1648 and ended thirty years of war across central Europe.",
    "Photosynthesis turns light, water and carbon dioxide into glucose and oxygen in the chloroplast.",
    "Approximate nearest neighbour search trades a little accuracy for speed on large collections: "
    "an IVF index clusters vectors into partitions, searches only the closest few at query time, and "
    "product quantisation compresses each vector so that more of them fit in memory. Recall is "
    "measured against exact search on a sample of queries, and the index is rebuilt when it drops.",
    "A release is promoted from test to staging to production only after its evaluation passes. "
    "Rolling back moves the champion alias to the previous version; nothing is deleted, so the "
    "rollback can itself be undone. Every promotion is recorded with who approved it and when, and "
    "the serving endpoints pick up the new alias within a minute without a restart.",
    "Documents land in a folder per environment. Each file is parsed into blocks of text, the blocks "
    "are cut into overlapping chunks of about two hundred tokens, and each chunk is embedded and "
    "written to the vector table together with its source path, page number and a content hash, so "
    "that an unchanged file is never embedded twice.",
    "The patient presented with a persistent cough, mild fever and fatigue lasting two weeks. Chest "
    "X-ray showed no consolidation; blood tests were unremarkable apart from a slightly raised white "
    "cell count. A course of rest and fluids was advised, with a follow-up appointment in ten days.",
    "In the second half the visitors pressed high, won the ball twice in midfield and equalised from "
    "a corner; the home side's keeper then saved a penalty in stoppage time to keep the draw.",
    "Terms and conditions: the subscription renews automatically each month unless cancelled at least "
    "seven days before the renewal date. Refunds are issued for unused months only, within thirty "
    "days of a written request sent to the billing address listed on the invoice.",
    "Der Zug nach Berlin fährt um acht Uhr ab; bitte steigen Sie am Gleis drei ein. "
    "Le train pour Paris part à neuf heures. El tren a Madrid sale a las diez.",
    "| metric | value |\n|---|---|\n| recall@10 | 0.97 |\n| p50 latency | 7.9 ms |\n| rows | 100000 |",
)


def cache_root() -> Path:
    """``$LLMOPS_CACHE``, else ``$XDG_CACHE_HOME/llmops`` or ``~/.cache/llmops``.

    Not under LLMOPS_HOME: the graph and its verdict belong to the model and the machine, not to an
    environment's state, and each test gets a private LLMOPS_HOME that would rebuild them every time.
    """
    if os.environ.get("LLMOPS_CACHE"):
        return Path(os.environ["LLMOPS_CACHE"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "llmops"


def weight_levels() -> int:
    """Symmetric int8 weight levels this CPU's u8 x s8 kernel adds without saturating."""
    return WEIGHT_LEVELS if any(has_cpu_flag(flag) for flag in VNNI_FLAGS) else SATURATING_WEIGHT_LEVELS


def artifact_dir(fingerprint: str) -> Path:
    return cache_root() / "embedding" / f"{fingerprint.replace('/', '_')}-{RECIPE}-w{weight_levels()}"


def quantized_model(model_path: str, fingerprint: str, tokenize: Callable[[list[str]], dict]) -> Path:
    """The cached int8 graph for this model, built (export, calibration, rewrite) on first use."""
    target = artifact_dir(fingerprint) / "model.int8.onnx"
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    # Built beside the target and renamed in, so concurrent workers never read a half-written graph.
    with tempfile.TemporaryDirectory(dir=target.parent) as scratch:
        fp32 = Path(scratch) / "model.fp32.onnx"
        export_onnx(model_path, fp32)
        ranges = calibrate(fp32, [tokenize([text]) for text in CALIBRATION])
        built = Path(scratch) / target.name
        quantize(fp32, ranges, built, weight_levels())
        os.replace(built, target)
    return target


def export_onnx(model_path: str, out: Path) -> None:
    """The transformer as ONNX (last hidden state), with BERT's LayerNorm and GELU fused by ORT's optimiser."""
    import torch
    from onnxruntime.transformers import optimizer
    from onnxruntime.transformers.fusion_options import FusionOptions
    from transformers import AutoConfig, AutoModel

    class LastHiddenState(torch.nn.Module):
        def __init__(self, model: torch.nn.Module) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask, token_type_ids):  # noqa: ANN001, ANN201
            return self.model(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids).last_hidden_state

    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()
    config = AutoConfig.from_pretrained(model_path)
    model = AutoModel.from_pretrained(model_path, attn_implementation="eager").eval()
    example = torch.ones(2, 8, dtype=torch.long)
    raw = out.with_suffix(".raw.onnx")
    axes = {0: "batch", 1: "tokens"}
    with warnings.catch_warnings():
        # The tracer's notes on Python control flow in the mask code and on how aten::index maps to
        # opset 17: the exported graph is checked against fp32 by the int8 gate, not by these.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", category=UserWarning, module=r"torch\.onnx")
        torch.onnx.export(
            LastHiddenState(model),
            (example, example, torch.zeros_like(example)),
            str(raw),
            input_names=list(INPUTS),
            output_names=["last_hidden_state"],
            dynamic_axes={name: axes for name in [*INPUTS, "last_hidden_state"]},
            opset_version=17,
            dynamo=False,
        )
    options = FusionOptions("bert")
    # The fused Attention op would hide the Q/K/V projections from the int8 rewrite.
    options.enable_attention = False
    fused = optimizer.optimize_model(
        str(raw),
        model_type="bert",
        num_heads=int(config.num_attention_heads),
        hidden_size=int(config.hidden_size),
        optimization_options=options,
        opt_level=1,
    )
    fused.save_model_to_file(str(out))
    raw.unlink()


def weight_matmuls(graph) -> list:  # noqa: ANN001
    """MatMul nodes whose right-hand side is a 2-D weight: the Linear layers, not attention scores."""
    weights = {init.name for init in graph.initializer if len(init.dims) == 2}
    return [node for node in graph.node if node.op_type == "MatMul" and node.input[1] in weights]


def calibrate(model: Path, feeds: Iterable[dict]) -> dict[str, np.ndarray]:
    """Per-channel min and max (rows 0 and 1) of each weight MatMul's input, one text per run (no padding).

    They only set the SmoothQuant factors; the quantisation scales themselves are taken per row at run time.
    """
    import onnx
    import onnxruntime as ort

    proto = onnx.load(str(model))
    tensors = sorted({node.input[0] for node in weight_matmuls(proto.graph)})
    proto.graph.output.extend(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None) for name in tensors)
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    ranges: dict[str, np.ndarray] = {}
    inputs = [graph_input.name for graph_input in session.get_inputs()]
    for feed in feeds:
        values = session.run(tensors, {name: feed[name] for name in inputs})
        for name, value in zip(tensors, values, strict=True):
            rows = value.reshape(-1, value.shape[-1])
            seen = np.stack([rows.min(0), rows.max(0)])
            ranges[name] = seen if name not in ranges else np.stack([np.minimum(ranges[name][0], seen[0]), np.maximum(ranges[name][1], seen[1])])
    return ranges


def quantize(model: Path, ranges: dict[str, np.ndarray], out: Path, levels: int, alpha: float = SMOOTHING) -> None:
    """Rewrite each weight MatMul as Mul (smoothing) -> row-wise uint8 -> MatMulIntegerToFloat, with
    ``levels`` symmetric weight levels (``weight_levels()`` for this CPU).

    The smoothing divides each input channel by ``s`` and multiplies the weight's row by it
    (SmoothQuant): the product is unchanged, but the few outlier channels of BERT's hidden states no
    longer set one coarse step for every other channel of their row. MatMuls reading the same tensor
    (query, key, value) share one quantised copy of it. A lifted (unsigned) input's correction is
    added to the bias that the MatMul's reader adds (``reader_bias``).
    """
    import onnx
    from onnx import numpy_helper

    proto = onnx.load(str(model))
    graph = proto.graph
    weights = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    producers = {output: node for node in graph.node for output in node.output}
    readers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    matmuls = weight_matmuls(graph)
    added, prologue, rewritten = row_constants(), {}, {}
    for source, nodes in by_input(matmuls).items():
        producer = producers.get(source)
        floor = FLOORS.get(producer.op_type) if producer is not None else None
        biases = {node.name: reader_bias(node, readers, weights) for node in nodes}
        if floor is not None and None in biases.values():
            floor = None  # nowhere to take the lift back out: quantise it symmetric
        smooth = shared_smoothing(ranges[source], [weights[node.input[1]] for node in nodes], alpha)
        stem = source.strip("/").replace("/", "_")
        added.append(numpy_helper.from_array((1 / smooth).astype(np.float32), f"{stem}_smooth"))
        prologue[source] = row_quantizer(source, stem) if floor is None else unsigned_row_quantizer(source, stem, floor)
        for node in nodes:
            name = node.input[1]
            quantized, column_scales = quantize_weight(weights[name] * smooth[:, None], levels)
            if floor:
                # The integers stand for (x + floor) / s: take floor / s times the quantised weight back out.
                bias = biases[node.name]
                weights[bias] = weights[bias] - (floor / smooth) @ (quantized.astype(np.float32) * column_scales)
                added.append(numpy_helper.from_array(weights[bias].astype(np.float32), bias))
            zero = "row_zero" if floor is None else "row_unsigned_zero"
            initializers, rewritten[node.name] = integer_matmul(node, stem, zero, quantized, column_scales)
            added += initializers
    splice(proto, matmuls, prologue, rewritten, added)
    onnx.save(proto, str(out))


def by_input(matmuls: list) -> dict[str, list]:
    """The weight MatMuls grouped by the tensor they read: query, key and value share one."""
    grouped: dict[str, list] = {}
    for node in matmuls:
        grouped.setdefault(node.input[0], []).append(node)
    return grouped


def shared_smoothing(input_range: np.ndarray, weights: list[np.ndarray], alpha: float) -> np.ndarray:
    """The SmoothQuant factors of one input (its calibrated min and max rows) for all the weights that read it."""
    low, high = input_range
    return smoothing(np.maximum(-low, high), np.max([np.abs(weight).max(1) for weight in weights], axis=0), alpha)


def integer_matmul(matmul, stem: str, zero: str, quantized: np.ndarray, column_scales: np.ndarray) -> tuple[list, object]:  # noqa: ANN001
    """The MatMulIntegerToFloat that replaces ``matmul`` and the weight initializers it reads:
    ``{stem}_u8`` (zero point ``zero``, scales ``{stem}_scale``) times ``quantized``."""
    from onnx import helper, numpy_helper

    name = matmul.input[1]
    initializers = [
        numpy_helper.from_array(quantized, f"{name}_i8"),
        numpy_helper.from_array(column_scales, f"{name}_scale"),
        numpy_helper.from_array(np.zeros_like(quantized[0]), f"{name}_zero"),
    ]
    node = helper.make_node(
        "MatMulIntegerToFloat",
        [f"{stem}_u8", f"{name}_i8", f"{stem}_scale", f"{name}_scale", zero, f"{name}_zero"],
        list(matmul.output),
        name=matmul.name,
        domain="com.microsoft",
    )
    return initializers, node


def splice(proto, matmuls: list, prologue: dict[str, list], rewritten: dict, added: list) -> None:  # noqa: ANN001
    """Put each rewritten MatMul in its node's place, the quantiser of its input (``prologue``, by
    input) before the first reader, and keep only the initializers something still reads."""
    from onnx import helper

    graph = proto.graph
    nodes = []
    for node in graph.node:
        if node.name in rewritten:
            nodes += prologue.pop(node.input[0], [])
            nodes.append(rewritten[node.name])
        else:
            nodes.append(node)
    replaced = {node.input[1] for node in matmuls} | {init.name for init in added}
    kept = [init for init in graph.initializer if init.name not in replaced]
    read = {name for node in nodes for name in node.input}
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.initializer[:]
    graph.initializer.extend(init for init in kept + added if init.name in read)
    if not any(opset.domain == "com.microsoft" for opset in proto.opset_import):
        proto.opset_import.append(helper.make_opsetid("com.microsoft", 1))


# Where a MatMul's reader takes the bias it adds: ORT's fused ops carry it as an input.
BIAS_INPUTS = {"Add": (0, 1), "BiasGelu": (1,), "SkipLayerNormalization": (4,)}


def reader_bias(matmul, readers: dict[str, list], weights: dict[str, np.ndarray]) -> str | None:  # noqa: ANN001
    """The 1-D bias initializer that the only reader of ``matmul``'s output adds, and nothing else reads.

    MatMulIntegerToFloat's own bias cannot take it: with per-row input scales, ORT multiplies the
    bias by the row's scale as well.
    """
    after = readers.get(matmul.output[0], [])
    if len(after) == 1:
        reader = after[0]
        for position in BIAS_INPUTS.get(reader.op_type, ()):
            if position < len(reader.input):
                name = reader.input[position]
                if name in weights and weights[name].ndim == 1 and len(readers.get(name, [])) == 1:
                    return name
    return None


def row_constants() -> list:
    """The initializers every row quantiser shares."""
    from onnx import numpy_helper

    return [
        numpy_helper.from_array(np.array(1 / ACTIVATION_LEVELS, np.float32), "row_step"),
        numpy_helper.from_array(np.array(1e-8, np.float32), "row_floor"),
        numpy_helper.from_array(np.array(ACTIVATION_ZERO, np.uint8), "row_zero"),
        numpy_helper.from_array(np.array([ACTIVATION_ZERO], np.uint8), "row_zero_1d"),
        numpy_helper.from_array(np.array(1 / UNSIGNED_LEVELS, np.float32), "row_unsigned_step"),
        numpy_helper.from_array(np.array(0, np.uint8), "row_unsigned_zero"),
        numpy_helper.from_array(np.array([0], np.uint8), "row_unsigned_zero_1d"),
        numpy_helper.from_array(np.array([-1], np.int64), "row_flat"),
    ]


def row_quantizer(source: str, stem: str) -> list:
    """Nodes that smooth ``source`` ([batch, tokens, channels]) and quantise it one token row at a time.

    Outputs ``{stem}_u8`` (same shape, uint8 around ``ACTIVATION_ZERO``) and ``{stem}_scale``
    ([batch, tokens, 1]). The row's largest magnitude comes from ReduceMax and ReduceMin (two reads,
    no Abs copy), and one per-axis QuantizeLinear over the flattened rows does the divide, round,
    shift and cast in a single pass: about a third of the time of the same steps as separate ops.
    """
    from onnx import helper

    smoothed = f"{stem}_smoothed"
    return [helper.make_node("Mul", [source, f"{stem}_smooth"], [smoothed]), *signed_rows(source, smoothed, stem)]


def signed_rows(source: str, smoothed: str, stem: str) -> list:
    """``row_quantizer``'s nodes after the smoothing: ``smoothed`` to ``{stem}_u8`` and ``{stem}_scale``."""
    from onnx import helper

    return [
        helper.make_node("ReduceMax", [smoothed], [f"{stem}_high"], axes=[-1]),
        helper.make_node("ReduceMin", [smoothed], [f"{stem}_low"], axes=[-1]),
        helper.make_node("Neg", [f"{stem}_low"], [f"{stem}_neg_low"]),
        helper.make_node("Max", [f"{stem}_high", f"{stem}_neg_low", "row_floor"], [f"{stem}_magnitude"]),
        helper.make_node("Mul", [f"{stem}_magnitude", "row_step"], [f"{stem}_scale"]),
        *row_cast(source, smoothed, stem, "row_zero_1d"),
    ]


def unsigned_row_quantizer(source: str, stem: str, floor: float) -> list:
    """Like ``row_quantizer`` for an input that never falls below ``-floor``: lifted by ``floor``, smoothed,
    and scaled by the row's largest value to uint8 from zero point 0."""
    from onnx import helper, numpy_helper

    lifted, smoothed = f"{stem}_lifted", f"{stem}_smoothed"
    return [
        helper.make_node("Constant", [], [f"{stem}_floor"], value=numpy_helper.from_array(np.array(floor, np.float32))),
        helper.make_node("Add", [source, f"{stem}_floor"], [lifted]),
        helper.make_node("Mul", [lifted, f"{stem}_smooth"], [smoothed]),
        helper.make_node("ReduceMax", [smoothed], [f"{stem}_high"], axes=[-1]),
        helper.make_node("Max", [f"{stem}_high", "row_floor"], [f"{stem}_magnitude"]),
        helper.make_node("Mul", [f"{stem}_magnitude", "row_unsigned_step"], [f"{stem}_scale"]),
        *row_cast(source, smoothed, stem, "row_unsigned_zero_1d"),
    ]


def row_cast(source: str, smoothed: str, stem: str, zero: str) -> list:
    """One per-axis QuantizeLinear over the flattened rows of ``smoothed`` by ``{stem}_scale``, reshaped back to ``source``'s shape."""
    from onnx import helper

    rows, flat_scale = f"{stem}_rows", f"{stem}_flat_scale"
    return [
        helper.make_node("Flatten", [smoothed], [rows], axis=2),
        helper.make_node("Reshape", [f"{stem}_scale", "row_flat"], [flat_scale]),
        helper.make_node("Shape", [flat_scale], [f"{stem}_row_count"]),
        helper.make_node("Expand", [zero, f"{stem}_row_count"], [f"{stem}_row_zeros"]),
        helper.make_node("QuantizeLinear", [rows, flat_scale, f"{stem}_row_zeros"], [f"{stem}_rows_u8"], axis=0),
        helper.make_node("Shape", [source], [f"{stem}_shape"]),
        helper.make_node("Reshape", [f"{stem}_rows_u8", f"{stem}_shape"], [f"{stem}_u8"]),
    ]


def smoothing(activation_max: np.ndarray, weight_max: np.ndarray, alpha: float) -> np.ndarray:
    """SmoothQuant's per-channel factor: moves a share ``alpha`` of the activation range into the weights."""
    if alpha <= 0:
        return np.ones_like(activation_max)
    factor = np.maximum(activation_max, 1e-5) ** alpha / np.maximum(weight_max, 1e-5) ** (1 - alpha)
    return np.clip(factor, 1e-2, 1e2).astype(np.float32)


def quantize_weight(weight: np.ndarray, levels: int = WEIGHT_LEVELS) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 per output column (axis 1 of a MatMul's right-hand side)."""
    scales = np.maximum(np.abs(weight).max(axis=0), 1e-12) / levels
    return np.clip(np.round(weight / scales), -levels, levels).astype(np.int8), scales.astype(np.float32)


def session(model: Path):  # noqa: ANN201
    """An ORT CPU session on the int8 graph."""
    import onnxruntime as ort

    return ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def write_json(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    scratch = path.with_suffix(f".{os.getpid()}.tmp")
    scratch.write_text(json.dumps(payload, indent=2, sort_keys=True))
    os.replace(scratch, path)


def machine_key() -> str:
    """What int8 speed and rounding depend on: CPU model and ISA, and the ONNX Runtime build."""
    import platform

    import onnxruntime as ort

    model = platform.processor()
    try:
        model = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    flags = sorted(flag for flag in ("avx2", "avx512f", *VNNI_FLAGS) if has_cpu_flag(flag))
    described = f"{platform.machine()}|{model}|{','.join(flags)}|ort {ort.__version__}"
    return hashlib.sha256(described.encode()).hexdigest()[:12]


def has_cpu_flag(flag: str) -> bool:
    try:
        return any(line.startswith("flags") and f" {flag} " in f"{line} " for line in Path("/proc/cpuinfo").read_text().splitlines())
    except OSError:
        return False


def probe(size: int = PROBE_PASSAGES) -> tuple[list[str], list[str]]:
    """The gate's retrieval probe, built like bench/embed.py: passages, and each passage's first sentence as a query.

    The passages are prose paragraphs of the Python language reference that ships with every CPython
    (``pydoc_data.topics``): real documentation that nobody on the project wrote, and none of the
    calibration texts. Two hundred of them make near-ties between passages as a real index does;
    a probe built from the calibration texts (about fifty passages) passed int8 at an overlap of 0.992
    on a VNNI CPU where the Debian FAQ PDF gave 0.971 and this probe gives 0.978.
    """
    from pydoc_data.topics import topics

    paragraphs = []
    for name in sorted(topics):
        for paragraph in topics[name].split("\n\n"):
            lines = paragraph.splitlines()
            # Indented lines are grammar and code; a last line of *, =, - or ~ underlines a heading.
            if not lines or any(line.startswith(" ") for line in lines) or set(lines[-1]) <= set("*=-~^"):
                continue
            text = " ".join(line.strip() for line in lines)
            if len(text.split()) >= PROBE_MIN_WORDS:
                paragraphs.append(text)
    paragraphs = list(dict.fromkeys(paragraphs))
    passages = paragraphs[:: max(1, len(paragraphs) // size)][:size]
    return [first_sentence(text) for text in passages], passages


def first_sentence(text: str) -> str:
    """A passage's first sentence: the probe's and the embedding benchmark's query for it."""
    return re.split(r"(?<=[.!?])\s", text, maxsplit=1)[0]
