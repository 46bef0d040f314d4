"""``oniwm export``: a checkpoint's ONNX graphs (belief update, batched rollout) or TensorRT engines, checked.

    oniwm export --checkpoint RUN --format onnx --out DIR [--horizon 10] [--max-samples 256]
    oniwm export --checkpoint RUN --format tensorrt --out DIR     # on the machine with the NVIDIA GPU

Writes ``DIR/observe.onnx``, ``DIR/rollout.onnx`` and ``DIR/metadata.json`` (see
:mod:`worldmodel.export.onnx_export`); ``--format tensorrt`` also builds ``DIR/*.fp16.engine`` (see
:mod:`worldmodel.export.tensorrt_build`). Both run a parity check against torch and exit 1 when it fails
(ONNX: max abs difference above ``--tolerance``, default 1e-4), or when a dependency or the GPU is missing.
"""

from __future__ import annotations

import argparse
import logging
import sys

log = logging.getLogger("worldmodel.export")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``export`` to ``oniwm``."""
    parser = subparsers.add_parser("export", help="ONNX graphs / TensorRT engines of a checkpoint, with a parity check",
                                   description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, metavar="RUN", help="a checkpoint or run directory")
    parser.add_argument("--format", choices=("onnx", "tensorrt"), default="onnx",
                        help="onnx: graphs for onnxruntime; tensorrt: the graphs plus fp16 engines (needs an NVIDIA GPU)")
    parser.add_argument("--out", required=True, metavar="DIR", help="export directory (created; replaced file by file)")
    parser.add_argument("--horizon", type=int, default=10, metavar="H", help="rollout steps, fixed in the graph (default 10)")
    parser.add_argument("--beam-stride", type=int, default=1, metavar="K",
                        help="the rollout decodes every K-th LiDAR beam (exact for those beams; default 1: all)")
    parser.add_argument("--max-samples", type=int, default=256, metavar="N",
                        help="largest rollout batch checked and profiled (default 256; the ONNX batch is dynamic)")
    parser.add_argument("--opset", type=int, default=17, help="ONNX opset (>= 17, default 17)")
    parser.add_argument("--tolerance", type=float, default=1e-4,
                        help="largest max-abs difference to torch that passes (ONNX; default 1e-4)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the parity check's inputs")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from worldmodel.backends.base import BackendUnavailable, ExportError
    from worldmodel.checkpoint import CheckpointError
    from worldmodel.export.onnx_export import export_onnx

    try:
        if args.format == "tensorrt":
            from worldmodel.export.tensorrt_build import require_tensorrt

            # Before any work: a machine that cannot build engines should say so, not export half.
            require_tensorrt("--format tensorrt")
        meta = export_onnx(args.checkpoint, args.out, horizon=args.horizon, max_samples=args.max_samples,
                           beam_stride=args.beam_stride,
                           opset=args.opset, tolerance=args.tolerance, seed=args.seed)
        if args.format == "tensorrt":
            from worldmodel.export.tensorrt_build import build_engines

            meta["tensorrt"] = build_engines(args.out)
    except BackendUnavailable as exc:
        log.error("%s", exc)
        return 1
    except (ExportError, CheckpointError, ValueError) as exc:
        log.error("export failed: %s", exc)
        return 1
    parity = meta["parity"]
    lines = [(f"export {args.out}  (checkpoint step {meta['checkpoint']['step']}, horizon {meta['io']['horizon']}, "
              f"up to {meta['io']['max_samples']} samples, opset {args.opset})")]
    for graph in meta["graphs"].values():
        lines.append(f"  {graph['file']:<22} {len(graph['inputs']):>3} inputs  {len(graph['outputs'])} outputs")
    lines.append(f"parity vs torch ({parity['cases']} cases, tolerance {parity['tolerance']:.0e}): "
                 f"max abs {parity['max_abs']:.2e}")
    for part in ("observe", "rollout"):
        lines.append(f"  {part:<8} " + "  ".join(f"{k} {v:.1e}" for k, v in parity[part].items()))
    if "tensorrt" in meta:
        trt = meta["tensorrt"]
        lines.append(f"tensorrt {trt['version']} fp16 engines: " + ", ".join(e["file"] for e in trt["engines"].values())
                     + f"; parity max abs {trt['parity']['max_abs']:.2e}")
    sys.stdout.write("\n".join(lines) + "\n")
    return 0
