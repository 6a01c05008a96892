"""How close can row-wise int8 get to fp32's top-10 on MiniLM? A simulation in torch.

    .venv/bin/python scripts/int8_ceiling.py [--corpus DIR] [--distil STEPS] [--blockwise] [--rotated]

Runs the embedder in fp32 with every Linear layer's rounding simulated as the int8 graph does it
(``core.quantization``): SmoothQuant factors from the calibration texts, each token row of a
Linear's input on its own scale (a GELU output lifted and unsigned), per-output-channel weights.
Then the same with parts left in fp32, to show where the error comes from and what the best case
of this recipe is, and LLM.int8()'s outlier decomposition (the inputs' largest channels per Linear
kept in fp32, found on the calibration texts, the rest rounded row-wise) without SmoothQuant, and
QuaRot's rotation (each smoothed input and its weight turned by the same block-Hadamard matrix
before rounding, so no channel stands far above the rest of its row).
Prints, per configuration, the top-10 overlap with fp32 (queries: the first sentence of each chunk,
as ``bench/embed.py``) and the mean cosine error of the chunks' vectors.
The simulation's arithmetic is float32 and ORT's rounding of the scales differs slightly, so its
figures are within about 0.01 of the real graph's, not equal to them.

With ``--distil STEPS``, it also tries quantisation-aware distillation: a copy of the model with
the recipe's rounding in every Linear (8-bit weights and inputs, straight-through gradients) is
trained for STEPS batches of 32 to give fp32's vectors (cosine loss), on docstring paragraphs of
the standard library (neither the probe's language reference nor the corpus), and measured as the
rows above every quarter of the way. About 3 s a step on two cores.

With ``--blockwise``, it also runs ONNX Runtime's own finest-grained 8-bit recipe for real:
``MatMulNBitsQuantizer`` with 8-bit weights in blocks of 32 along the input (a scale per 32
weights, not per output channel), once computed in fp32 (weights only) and once in int8 (each block
of 32 inputs on its own scale too), each with its speed over the fp32 embedder. It needs ``onnx-ir``
(in the dev extra), which that quantiser imports.

With ``--rotated``, it also builds and runs the rotation for real: the recipe's graph as this CPU
gets it, and the same with each input turned by a block-Hadamard matrix (blocks of 128 and of 32:
a batched MatMul and two Transposes before each row quantiser) and each weight turned to match.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from embed import corpus_chunks, overlap, timed, top10  # noqa: E402

from llmops_dagster.core import quantization  # noqa: E402
from llmops_dagster.core.embedding import INT8_MIN_OVERLAP, Embedder, EmbedderConfig  # noqa: E402


def feed_forward(name: str) -> bool:
    return name.endswith("intermediate.dense") or (name.endswith("output.dense") and "attention" not in name)


def is_gelu_input(name: str) -> bool:
    return name.endswith("output.dense") and "attention" not in name


def rounded(value, low: int, high: int):  # noqa: ANN001, ANN201
    """``value`` rounded to whole steps within [low, high]; where it carries a gradient, a
    straight-through one (the rounding is in the forward pass, and backward sees past it)."""
    whole = value.round().clamp(low, high)
    return value + (whole - value).detach() if value.requires_grad else whole


def round_weight(weight, levels: int):  # noqa: ANN001, ANN201
    """Each output channel (row) of ``weight`` on its own scale, ``levels`` steps a side."""
    step = weight.detach().abs().amax(1, keepdim=True).clamp(min=1e-12) / levels
    return rounded(weight / step, -levels, levels) * step


def round_rows(x, lift=None):  # noqa: ANN001, ANN201
    """Each token row of a Linear's input on its own scale, as the int8 graph rounds it; with
    ``lift`` (a GELU output's), lifted and unsigned."""
    if lift is not None:
        shifted = x + lift
        step = shifted.detach().amax(-1, keepdim=True).clamp(min=1e-8) / quantization.UNSIGNED_LEVELS
        return rounded(shifted / step, 0, quantization.UNSIGNED_LEVELS) * step - lift
    levels = quantization.ACTIVATION_LEVELS
    step = x.detach().abs().amax(-1, keepdim=True).clamp(min=1e-8) / levels
    return rounded(x / step, -levels, levels) * step


def smoothing(input_range, weight):  # noqa: ANN001, ANN201
    """SmoothQuant's factor per input channel of a Linear, from its inputs' range on the calibration texts."""
    import torch

    return torch.from_numpy(quantization.smoothing(input_range.numpy(), weight.detach().abs().amax(0).numpy(), quantization.SMOOTHING))


class Simulation:
    def __init__(self, embedder: Embedder) -> None:
        import torch

        self.embedder = embedder
        self.linears = {name: module for name, module in embedder.model.named_modules() if isinstance(module, torch.nn.Linear)}
        self.weights = {name: module.weight.data.clone() for name, module in self.linears.items()}
        self.hooks: list = []
        # Largest magnitude of each Linear's input channels over the calibration texts, one text at a time.
        self.ranges: dict[str, torch.Tensor] = {}
        for name, module in self.linears.items():
            self.hooks.append(module.register_forward_pre_hook(self._recorder(name)))
        for text in quantization.CALIBRATION:
            embedder.encode([text])
        self.reset()

    def _recorder(self, name: str):  # noqa: ANN202
        import torch

        def record(_module, inputs) -> None:  # noqa: ANN001
            seen = inputs[0].abs().amax(dim=(0, 1))
            self.ranges[name] = seen if name not in self.ranges else torch.maximum(self.ranges[name], seen)

        return record

    def reset(self) -> None:
        for hook in self.hooks:
            hook.remove()
        self.hooks = []
        for name, module in self.linears.items():
            module.weight.data = self.weights[name].clone()

    def apply(self, weight_levels: int | None, activations: bool, keep=lambda name: False, outliers: int = 0, rotation: int = 0) -> None:  # noqa: ANN001
        """Round the Linears as configured; with ``outliers``, that many input channels of each
        (the largest on the calibration texts) stay in fp32 and nothing is smoothed; with
        ``rotation``, each smoothed input and its weight are rotated first (``hadamard``)."""
        import torch

        assert not (outliers and rotation), "one remedy at a time"
        self.reset()
        for name, module in self.linears.items():
            if keep(name) or self.ranges[name].dim() == 0:
                continue
            weight = self.weights[name]  # [out, in]
            if outliers:
                smooth = torch.ones(weight.shape[1])
                exact = torch.zeros(weight.shape[1], dtype=torch.bool)
                exact[self.ranges[name].topk(outliers).indices] = True
                module.weight.data = weight.clone()
                if weight_levels:  # the other columns per output channel; the outliers' stay fp32
                    module.weight.data = torch.where(exact, weight, round_weight(weight * ~exact, weight_levels))
                self.hooks.append(module.register_forward_pre_hook(self._rounder(smooth, activations, is_gelu_input(name), exact)))
                continue
            smooth = smoothing(self.ranges[name], weight)
            scaled = weight * smooth[None, :]
            if rotation:
                # x·Wᵀ = (x·R)·(W·R)ᵀ for an orthogonal R: both sides are rounded rotated, and the
                # hook hands the Linear (rounded x·R)·Rᵀ against the weight (rounded W·R)·Rᵀ.
                turn = torch.from_numpy(hadamard(weight.shape[1], rotation)).float()
                module.weight.data = (round_weight(scaled @ turn, weight_levels) if weight_levels else scaled @ turn) @ turn.T
                self.hooks.append(module.register_forward_pre_hook(self._rounder(smooth, activations, False, turn=turn)))
                continue
            module.weight.data = round_weight(scaled, weight_levels) if weight_levels else scaled
            self.hooks.append(module.register_forward_pre_hook(self._rounder(smooth, activations, is_gelu_input(name))))

    @staticmethod
    def _rounder(smooth, activations: bool, lifted: bool, exact=None, turn=None):  # noqa: ANN001, ANN205
        """The Linear's input as the int8 graph rounds it; ``exact``: channels left as they are;
        ``turn``: rounded after rotating by it, and rotated back."""
        lift = quantization.GELU_FLOOR / smooth if lifted else None

        def rounder(_module, inputs):  # noqa: ANN001, ANN202
            x = inputs[0] / smooth
            if not activations:
                return (x,)
            if turn is not None:
                return (round_rows(x @ turn) @ turn.T,)
            if exact is None:
                return (round_rows(x, lift),)
            return (x * exact + round_rows(x * ~exact, None if lift is None else lift * ~exact),)

        return rounder


def hadamard(size: int, block: int):  # noqa: ANN201
    """An orthogonal ``size``-square matrix (float64): Sylvester-Hadamard blocks of ``block`` on the
    diagonal, rows signed at random (QuaRot's rotation). Spreads an outlier channel over the block,
    so a row's largest value is no longer far above the rest."""
    import numpy as np
    from scipy.linalg import hadamard as sylvester

    signs = np.random.default_rng(size).choice([-1.0, 1.0], size)
    return signs[:, None] * np.kron(np.eye(size // block), sylvester(block) / block**0.5)


def stdlib_prose(excluded: set[str], limit: int = 3000) -> list[str]:
    """Docstring paragraphs (8 words or more) of the standard library's modules and their classes
    and functions, shuffled with a fixed seed: English prose none of the measured texts are."""
    import importlib
    import inspect
    import pkgutil
    import random
    import sysconfig
    import warnings

    skipped = {"antigravity", "idlelib", "pydoc_data", "this", "tkinter", "turtle", "turtledemo"}
    paragraphs = []
    for module in pkgutil.iter_modules([sysconfig.get_paths()["stdlib"]]):
        if module.name.startswith("_") or module.name in skipped:
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                loaded = importlib.import_module(module.name)
        except Exception:  # noqa: BLE001 - a module this platform lacks
            continue
        members = [value for _, value in inspect.getmembers(loaded) if inspect.isclass(value) or inspect.isfunction(value)]
        for value in [loaded, *(member for member in members if getattr(member, "__module__", None) == module.name)]:
            for paragraph in (inspect.getdoc(value) or "").split("\n\n"):
                lines = paragraph.splitlines()  # indented lines are code and examples
                if not any(line.startswith(" ") for line in lines) and len(" ".join(lines).split()) >= 8:
                    paragraphs.append(" ".join(line.strip() for line in lines))
    paragraphs = [text for text in dict.fromkeys(paragraphs) if text not in excluded]
    random.Random(0).shuffle(paragraphs)
    return paragraphs[:limit]


def fake_quantized(model, ranges: dict):  # noqa: ANN001, ANN201
    """A copy of ``model`` whose Linears round as the int8 graph does (8-bit weights), with
    straight-through gradients (``rounded``) while it is trained."""
    import copy

    import torch

    class FakeQuantLinear(torch.nn.Module):
        def __init__(self, linear, smooth, lifted: bool) -> None:  # noqa: ANN001
            super().__init__()
            self.weight, self.bias, self.lifted = linear.weight, linear.bias, lifted
            self.register_buffer("smooth", smooth)

        def forward(self, x):  # noqa: ANN001, ANN202
            x = round_rows(x / self.smooth, quantization.GELU_FLOOR / self.smooth if self.lifted else None)
            weight = round_weight(self.weight * self.smooth[None, :], quantization.WEIGHT_LEVELS)
            return torch.nn.functional.linear(x, weight, self.bias)

    student = copy.deepcopy(model)
    for parent_name, parent in list(student.named_modules()):
        for name, child in list(parent.named_children()):
            full = f"{parent_name}.{name}" if parent_name else name
            if isinstance(child, torch.nn.Linear) and full in ranges and ranges[full].dim():
                setattr(parent, name, FakeQuantLinear(child, smoothing(ranges[full], child.weight), is_gelu_input(full)))
    return student


def distil(embedder: Embedder, ranges: dict, steps: int, rate: float, measure, excluded: set[str]) -> None:  # noqa: ANN001
    """Train a fake-quantised copy to give fp32's vectors; ``measure(label)`` prints a row with it in place."""
    import random

    import torch

    from llmops_dagster.core.embedding import mean_pool

    texts = stdlib_prose(excluded)
    teacher = embedder.model
    student = fake_quantized(teacher, ranges)
    for name, parameter in student.named_parameters():
        parameter.requires_grad_("embeddings" not in name)  # the token embeddings are not rounded
    optimiser = torch.optim.AdamW([p for p in student.parameters() if p.requires_grad], lr=rate, weight_decay=0.0)
    draw = random.Random(0)

    def pooled(model, batch):  # noqa: ANN001, ANN202
        return torch.nn.functional.normalize(mean_pool(model(**batch).last_hidden_state, batch["attention_mask"]), dim=-1)

    print(f"\ndistilling on {len(texts)} standard-library docstring paragraphs, learning rate {rate:g}")
    for step in range(steps + 1):
        if step % max(1, steps // 4) == 0 or step == steps:
            embedder.model = student
            measure(f"distilled, step {step}")
            embedder.model = teacher
        if step == steps:
            break
        batch = embedder.tokenizer(draw.sample(texts, 32), padding=True, truncation=True, max_length=128, return_tensors="pt")
        with torch.no_grad():
            target = pooled(teacher, batch)
        loss = (1 - (pooled(student, batch) * target).sum(-1)).mean() * 1000  # dropout stays off: eval mode
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()


# (label, MatMulNBits accuracy_level): 0 leaves the compute in fp32, 4 quantises the inputs too.
BLOCKWISE = (("ORT block-wise 8-bit weights only, fp32 compute", 0), ("ORT block-wise 8-bit, int8 compute", 4))
BLOCK = 32


def blockwise(embedder: Embedder, fp32: Path, scratch: Path) -> list[tuple[str, Path]]:
    """ONNX Runtime's ``MatMulNBitsQuantizer`` graphs (``BLOCKWISE``), written under ``scratch``."""
    import logging

    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer

    logging.getLogger().setLevel(logging.WARNING)  # the quantiser's import sets the root logger to INFO: a line per node
    graphs = []
    for label, accuracy in BLOCKWISE:
        config = DefaultWeightOnlyQuantConfig(block_size=BLOCK, is_symmetric=True, accuracy_level=accuracy, bits=8)
        quantizer = MatMulNBitsQuantizer(onnx.load(str(fp32)), algo_config=config)
        quantizer.process()
        graph = scratch / f"model.{accuracy}.onnx"
        quantizer.model.save_model_to_file(str(graph), False)
        graphs.append((label, graph))
    return graphs


ROTATIONS = (128, 32)


def rotated(embedder: Embedder, fp32: Path, scratch: Path) -> list[tuple[str, Path]]:
    """The int8 recipe's graph as built for this CPU, and the same with each smoothed input rotated
    before its rows are rounded (``hadamard``, blocks of each of ``ROTATIONS``) and every weight
    rotated to match, written under ``scratch``."""
    ranges = quantization.calibrate(fp32, [embedder._tokenize_np([text]) for text in quantization.CALIBRATION])  # noqa: SLF001
    recipe = scratch / "model.recipe.onnx"
    quantization.quantize(fp32, ranges, recipe, quantization.weight_levels())
    graphs = [("the recipe, as built for this CPU", recipe)]
    for block in ROTATIONS:
        graph = scratch / f"model.rotated{block}.onnx"
        rotated_graph(fp32, ranges, graph, block)
        graphs.append((f"Hadamard-rotated (blocks of {block}), signed rows throughout", graph))
    return graphs


def rotated_graph(fp32: Path, ranges: dict, out: Path, block: int) -> None:
    """``quantization.quantize`` with a rotation: each input x is turned into x·diag(1/s)·R (blocks
    of ``block`` channels, one batched MatMul between two Transposes) and rounded row by row,
    signed, and each weight W into Rᵀ·diag(s)·W, rounded per output channel."""
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    proto = onnx.load(str(fp32))
    weights = {init.name: numpy_helper.to_array(init) for init in proto.graph.initializer}
    matmuls = quantization.weight_matmuls(proto.graph)
    added, prologue, rewritten = quantization.row_constants(), {}, {}
    for source, nodes in quantization.by_input(matmuls).items():
        readers = [weights[node.input[1]] for node in nodes]
        smooth = quantization.shared_smoothing(ranges[source], readers, quantization.SMOOTHING).astype(np.float64)
        stem, count = source.strip("/").replace("/", "_"), len(smooth) // block
        turn = hadamard(len(smooth), block)
        scaled = turn / smooth[:, None]  # diag(1/s)·R is block-diagonal too
        blocks = np.stack([scaled[i * block : (i + 1) * block, i * block : (i + 1) * block] for i in range(count)])
        added += [
            numpy_helper.from_array(blocks.astype(np.float32), f"{stem}_turn"),
            numpy_helper.from_array(np.array([-1, count, block], np.int64), f"{stem}_blocks"),
        ]
        prologue[source] = [
            helper.make_node("Reshape", [source, f"{stem}_blocks"], [f"{stem}_split"]),  # [rows, count, block]
            helper.make_node("Transpose", [f"{stem}_split"], [f"{stem}_by_block"], perm=[1, 0, 2]),
            helper.make_node("MatMul", [f"{stem}_by_block", f"{stem}_turn"], [f"{stem}_turned"]),
            helper.make_node("Transpose", [f"{stem}_turned"], [f"{stem}_by_row"], perm=[1, 0, 2]),
            helper.make_node("Shape", [source], [f"{stem}_source_shape"]),
            helper.make_node("Reshape", [f"{stem}_by_row", f"{stem}_source_shape"], [f"{stem}_smoothed"]),
            *quantization.signed_rows(source, f"{stem}_smoothed", stem),
        ]
        for node, weight in zip(nodes, readers, strict=True):
            quantized, column_scales = quantization.quantize_weight(turn.T @ (weight * smooth[:, None]), quantization.weight_levels())
            initializers, rewritten[node.name] = quantization.integer_matmul(node, stem, "row_zero", quantized, column_scales)
            added += initializers
    quantization.splice(proto, matmuls, prologue, rewritten, added)
    onnx.save(proto, str(out))


def for_real(embedder: Embedder, builders: list, chunks: list[str], queries: list[str], reference, reference_chunks) -> None:  # noqa: ANN001
    """Each graph that ``builders`` write, run by the int8 path's encoder (tokenise, run the graph,
    pool): its top-10 overlap, cosine error and speed over the fp32 embedder, timed just before it."""
    import tempfile

    texts = [chunks[i % len(chunks)] for i in range(max(512, len(chunks)))]
    print(f"\n{'ONNX Runtime, run for real':<62}{'top-10 vs fp32':>16}{'cosine error':>14}{'× fp32 speed':>14}")
    with tempfile.TemporaryDirectory() as scratch:
        fp32 = Path(scratch) / "model.fp32.onnx"
        quantization.export_onnx(str(embedder.model_path), fp32)
        for build in builders:
            for label, graph in build(embedder, fp32, Path(scratch)):
                _, base_rate = timed(embedder.encode, texts, 2)  # fp32, beside each graph: the machine is shared
                embedder.int8_session, embedder.precision = quantization.session(graph), "int8"
                _, rate = timed(embedder.encode, texts, 2)
                vectors = embedder.encode(chunks)
                found = overlap(top10(embedder.encode(queries), vectors), reference)
                error = float(1 - (vectors * reference_chunks).sum(1).mean())
                embedder.precision = "fp32"
                print(f"{label:<62}{found:>16.3f}{error:>14.2e}{rate / base_rate:>14.2f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    default = Path(__file__).resolve().parents[1] / ".llmops" / "realdocs" / "debian-faq-pdf"
    parser.add_argument("--corpus", type=Path, default=default if default.is_dir() else Path(__file__).resolve().parents[1] / "sample_corpus")
    parser.add_argument("--blockwise", action="store_true", help="also run ONNX Runtime's block-wise 8-bit quantiser for real")
    parser.add_argument("--rotated", action="store_true", help="also run the recipe with Hadamard-rotated inputs and weights for real")
    parser.add_argument("--distil", type=int, metavar="STEPS", default=0, help="also train a fake-quantised copy for STEPS batches")
    parser.add_argument("--rate", type=float, default=5e-6, help="the distillation's learning rate")
    args = parser.parse_args()

    chunks = corpus_chunks(args.corpus)
    queries = [quantization.first_sentence(chunk) for chunk in chunks[:200]]
    embedder = Embedder(EmbedderConfig(precision="fp32", device="cpu"))
    reference_chunks = embedder.encode(chunks)
    reference = top10(embedder.encode(queries), reference_chunks)
    simulation = Simulation(embedder)
    print(f"{len(chunks)} chunks from {args.corpus}, {len(queries)} queries\n")
    print(f"{'simulated':<62}{'top-10 vs fp32':>16}{'cosine error':>14}")
    configurations = [
        ("the recipe, 8-bit weights (VNNI, AMX)", quantization.WEIGHT_LEVELS, True, lambda name: False),
        ("the recipe, 7-bit weights (AVX2)", quantization.SATURATING_WEIGHT_LEVELS, True, lambda name: False),
        ("8-bit weights only, inputs in fp32", quantization.WEIGHT_LEVELS, False, lambda name: False),
        ("inputs only, weights in fp32", None, True, lambda name: False),
        ("8-bit, the second feed-forward MatMul in fp32", quantization.WEIGHT_LEVELS, True, is_gelu_input),
        ("8-bit, both feed-forward MatMuls in fp32", quantization.WEIGHT_LEVELS, True, feed_forward),
        ("LLM.int8(): 16 outlier input channels in fp32, 8-bit weights", quantization.WEIGHT_LEVELS, True, lambda name: False, 16),
        ("LLM.int8(): 16 outlier input channels in fp32, weights fp32", None, True, lambda name: False, 16),
        ("Hadamard-rotated (blocks of 128), signed rows, 8-bit weights", quantization.WEIGHT_LEVELS, True, lambda name: False, 0, 128),
        ("Hadamard-rotated (blocks of 32), signed rows, 8-bit weights", quantization.WEIGHT_LEVELS, True, lambda name: False, 0, 32),
        ("Hadamard-rotated (blocks of 128), signed rows, weights fp32", None, True, lambda name: False, 0, 128),
        ("Hadamard-rotated (blocks of 128), 8-bit weights, inputs fp32", quantization.WEIGHT_LEVELS, False, lambda name: False, 0, 128),
    ]

    def measure(label: str) -> None:
        vectors = embedder.encode(chunks)
        found = overlap(top10(embedder.encode(queries), vectors), reference)
        error = float(1 - (vectors * reference_chunks).sum(1).mean())
        print(f"{label:<62}{found:>16.3f}{error:>14.2e}", flush=True)

    for name, levels, activations, keep, *extra in configurations:
        simulation.apply(levels, activations, keep, *extra)
        measure(name)
    simulation.reset()
    if args.distil:
        excluded = {*chunks, *queries, *(text for texts in quantization.probe() for text in texts)}
        distil(embedder, simulation.ranges, args.distil, args.rate, measure, excluded)
    builders = [build for build, wanted in ((blockwise, args.blockwise), (rotated, args.rotated)) if wanted]
    if builders:
        for_real(embedder, builders, chunks, queries, reference, reference_chunks)
    print(f"\nthe int8 gate asks for {INT8_MIN_OVERLAP:.2f}")


if __name__ == "__main__":
    main()
