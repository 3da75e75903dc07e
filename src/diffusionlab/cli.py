"""Command line: ``diffusionlab train | sample | eval | demo``.

User mistakes raise ``UserError``; ``main`` prints its one line and exits with status 2, no traceback.
"""

from __future__ import annotations

import argparse
import errno
import math
import os
import sys
import warnings


from .errors import UserError
from .grids import GRIDS
from .processes import PROCESSES
from .samplers import SAMPLERS
from .samplers.tuning import DETERMINISTIC, OBJECTIVES
from .precision import PRECISIONS

EXIT_USER_ERROR = 2
# OSErrors that are the machine's or the given paths' (a full disk, no permission, a path that cannot be created),
# reported in one line; any other OSError is a bug and keeps its traceback.
_MACHINE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS, errno.EISDIR, errno.ENOTDIR,
                   errno.ENOENT, errno.EEXIST, errno.ENAMETOOLONG, errno.ELOOP, errno.EMFILE}


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad command line as one line (the usage stays available with --help)."""

    def error(self, message):
        raise UserError(f"{message} (see '{self.prog} --help')")


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows a flag's default, except where there is none to show (``None``: the default comes from the config
    and the help text says it)."""

    def _get_help_string(self, action):
        if action.default is None:
            return action.help
        return super()._get_help_string(action)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0 or not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def _nonnegative_float(text: str) -> float:
    value = float(text)
    if not value >= 0 or not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a non-negative number, got {text}")
    return value


def _nonnegative_float_or_inf(text: str) -> float:
    """A number ≥ 0 where ``inf`` means "no bound" (EDM's S_tmax)."""
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be a non-negative number or inf, got {text}")
    return value


def _path(text: str) -> str:
    """A file or folder name: the empty string would silently mean the current directory."""
    if not text.strip():
        raise argparse.ArgumentTypeError("must be a non-empty path")
    return text


def _nonnegative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a non-negative integer, got {text}")
    return value


def _seed(text: str) -> int:
    value = int(text)
    if not 0 <= value < 2**63:
        raise argparse.ArgumentTypeError(f"must be an integer from 0 to 2**63 - 1, got {text}")
    return value


# argparse names the type in "invalid <name> value: 'abc'": say what is expected, not the function's name.
for _type, _name in ((_positive_int, "positive integer"), (_positive_float, "positive number"),
                     (_nonnegative_float, "non-negative number"), (_nonnegative_int, "non-negative integer"),
                     (_nonnegative_float_or_inf, "non-negative number or inf"), (_path, "path"), (_seed, "seed")):
    _type.__name__ = _name


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="diffusionlab", description="Train, sample and evaluate diffusion models.",
                formatter_class=_HelpFormatter)
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    fmt = _HelpFormatter

    t = sub.add_parser("train", help="train a model on a data set", formatter_class=fmt)
    t.add_argument("--data", type=_path, help="built-in name (digits, mnist, moons, swissroll, checkerboard, ring8) or a "
                                  "path (.npy/.npz or a folder of images); may be omitted when resuming")
    t.add_argument("--out", required=True, type=_path, help="run directory (checkpoints, log)")
    t.add_argument("--steps", type=_positive_int, help="total optimisation steps (default 5000)")
    t.add_argument("--batch-size", type=_positive_int, help="global batch size (default 128)")
    t.add_argument("--lr", type=_positive_float, help="learning rate (default 2e-4)")
    t.add_argument("--seed", type=_seed, help="seed of the split, the initialisation and the noise (default 0)")
    t.add_argument("--config", type=_path, help="JSON or TOML file of config overrides (see README)")
    t.add_argument("--process", choices=list(PROCESSES), help="forward process (default ddpm)")
    t.add_argument("--prediction", choices=["eps", "x0", "v"], help="what the network predicts (default eps)")
    t.add_argument("--loss", choices=["simple", "elbo"], help="denoising loss or the full ELBO (default simple)")
    t.add_argument("--weighting", choices=["eps", "x0", "v", "likelihood"], help="λ(t) of the simple loss")
    t.add_argument("--time-sampling", choices=["uniform", "logsnr", "importance"],
                   help="distribution of t (logsnr: for the likelihood weighting; importance: ELBO loss)")
    t.add_argument("--precision", choices=list(PRECISIONS),
                   help="bf16: the network in bfloat16 mixed precision (weights, optimizer and loss stay float32); "
                        "for hardware with native bfloat16 (CPUs with AMX / AVX512-BF16, recent GPUs); slower where it "
                        "is emulated (default fp32)")
    t.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")

    s = sub.add_parser("sample", help="draw samples from a trained run", formatter_class=fmt)
    s.add_argument("run_dir", type=_path)
    s.add_argument("--n", type=_positive_int, default=64, help="number of samples")
    s.add_argument("--out", required=True, type=_path, help=".png (image grid or scatter plot), .npy (samples in data units)")
    s.add_argument("--sampler", default="ancestral", choices=list(SAMPLERS))
    s.add_argument("--steps", type=_positive_int, help="grid points (default: the process's, T for DDPM)")
    s.add_argument("--grid", default="uniform", choices=list(GRIDS), help="time grid")
    s.add_argument("--seed", type=_seed, default=0)
    s.add_argument("--trajectory", type=_path, help="also write the reverse process x_T → x_0 (.png strip or .gif)")
    s.add_argument("--raw-weights", action="store_true", help="sample with the raw weights instead of the EMA")
    s.add_argument("--precision", default="fp32", choices=list(PRECISIONS),
                   help="bf16: the network under bfloat16 autocast (the sampler's arithmetic stays float32); "
                        "faster only where the hardware has bfloat16")
    s.add_argument("--no-denoise", action="store_true",
                   help="return x at t_min instead of the final denoising step x̂₀ = E[x₀ | x_{t_min}]")
    s.add_argument("--solver", type=_path, help="a fitted sampler from `diffusionlab fit-sampler` (.json): sets the sampler, "
                                    "its grid and coefficients, and replaces --sampler and --grid (--steps, if "
                                    "given, must match the file)")
    o = s.add_argument_group("sampler options (passed to the sampler only when given; the sampler must take them)")
    given = argparse.SUPPRESS  # an option not given is absent, so the sampler keeps its own default
    o.add_argument("--variance", default=given, choices=["small", "large"],
                   help="ancestral: reverse variance Σ_t = β̃_t (small, the default) or β_t (large)")
    o.add_argument("--eta", default=given, type=_nonnegative_float,
                   help="ddim: η, 0 deterministic (the default) … 1 ancestral")
    o.add_argument("--snr", default=given, type=_positive_float,
                   help="predictor_corrector: Langevin signal-to-noise ratio r (default 0.16)")
    o.add_argument("--corrector-steps", default=given, type=_nonnegative_int,
                   help="predictor_corrector: Langevin steps per grid time (default 1)")
    o.add_argument("--rtol", default=given, type=_positive_float, help="ode_rk45: relative tolerance (default 1e-5)")
    o.add_argument("--atol", default=given, type=_positive_float, help="ode_rk45: absolute tolerance (default 1e-5)")
    o.add_argument("--S-churn", dest="S_churn", default=given, type=_nonnegative_float,
                   help="edm_heun: churn S_churn, total noise added back along the way (default 0: deterministic Heun)")
    o.add_argument("--S-tmin", dest="S_tmin", default=given, type=_nonnegative_float,
                   help="edm_heun: churn only where σ/α >= S_tmin (default 0)")
    o.add_argument("--S-tmax", dest="S_tmax", default=given, type=_nonnegative_float_or_inf,
                   help="edm_heun: churn only where σ/α <= S_tmax (default inf)")
    o.add_argument("--S-noise", dest="S_noise", default=given, type=_nonnegative_float,
                   help="edm_heun: scale of the added noise S_noise (default 1)")
    o.add_argument("--order", default=given, type=int, choices=[1, 2, 3], help="unipc: order (default 2)")
    o.add_argument("--variant", default=given, choices=["bh1", "bh2"],
                   help="unipc: B(h) = h (bh1) or e^h − 1 (bh2, the default)")
    o.add_argument("--corrector", default=given, action=argparse.BooleanOptionalAction,
                   help="unipc: apply the UniC corrector (default: yes)")
    o.add_argument("--lower-order-final", default=given, action=argparse.BooleanOptionalAction,
                   help="dpmpp_*, unipc: lower the order on the last steps (default: yes)")

    f = sub.add_parser("fit-sampler", formatter_class=fmt,
                       help="fit a fast deterministic sampler (grid and coefficients) to a trained run")
    f.add_argument("run_dir", type=_path)
    f.add_argument("--steps", type=_positive_int, required=True, help="model evaluations of the fitted sampler (>= 2)")
    f.add_argument("--out", required=True, type=_path, help=".json file for `diffusionlab sample --solver`")
    f.add_argument("--base-sampler", default="unipc", choices=[n for n in DETERMINISTIC if n != "fitted_multistep"],
                   help="the sampler whose grid optimize_grid fits first")
    f.add_argument("--calibration", type=_positive_int, default=256, help="calibration noise draws")
    f.add_argument("--seed", type=_seed, default=0, help="seed of the calibration noise")
    f.add_argument("--batch-size", type=_positive_int, help="calibration draws per gradient batch (memory)")
    f.add_argument("--raw-weights", action="store_true", help="fit to the raw weights instead of the EMA")
    f.add_argument("--objective", choices=OBJECTIVES, default="rms",
                   help="error to the exact ODE solution that both fits minimise: root mean squared or mean distance "
                        "(less swayed by the rare draws whose exact trajectory changes mode)")

    e = sub.add_parser("eval", help="evaluate a trained run on data", formatter_class=fmt)
    e.add_argument("run_dir", type=_path)
    e.add_argument("--data", required=True, type=_path, help="data spec; the test split (by the run's seed) is used")
    e.add_argument("--metric", default="bpd", choices=["bpd", "fid"],
                   help="bpd: bits/dim of the test split; fid: Fréchet Inception Distance of n samples to the "
                        "test split (images only; needs pip install 'diffusionlab[fid]')")
    # Options of one metric or method only have no argparse default: one given where it does not apply is refused.
    given = argparse.SUPPRESS
    e.add_argument("--method", default=given, choices=["elbo", "ode"],
                   help="bpd: ELBO bound (all terms or stratified) or the probability-flow ODE (default elbo)")
    e.add_argument("--n", type=_positive_int, help="bpd: evaluate at most n test examples; fid: number of "
                                                    "samples to draw (default: as many as the test split has)")
    e.add_argument("--sampler", default=given, choices=list(SAMPLERS), help="fid: the sampler (default dpmpp_2m)")
    e.add_argument("--steps", type=_positive_int, default=given, help="fid: sampler grid points (default 20)")
    e.add_argument("--grid", default=given, choices=list(GRIDS), help="fid: time grid (default logsnr)")
    e.add_argument("--precision", default=given, choices=list(PRECISIONS),
                   help="fid: the network under bfloat16 autocast while sampling (default fp32; bpd: float32 only)")
    e.add_argument("--strata", type=_positive_int, default=given, help="ELBO: stratified estimate with this many "
                                                                       "terms per example (default: all terms)")
    e.add_argument("--variance", default=given, choices=["large", "small"],
                   help="ELBO: reverse variance Σ_t = β_t (large, the default) or β̃_t (small); both bound the NLL, "
                        "large is the tighter bound on the digits and on Gaussian data")
    e.add_argument("--probes", type=_positive_int, default=given, help="ODE: Hutchinson probes per example (default 1)")
    e.add_argument("--probe", default=given, choices=["rademacher", "gaussian"],
                   help="ODE: distribution of the Hutchinson probes (default rademacher)")
    e.add_argument("--trace", default=given, choices=["auto", "exact", "hutchinson"],
                   help="ODE: divergence by autograd (exact) or Hutchinson's estimate; auto (the default) is "
                        "exact up to 16 dimensions")
    e.add_argument("--rtol", type=_positive_float, default=given, help="ODE: solver's relative tolerance (1e-5)")
    e.add_argument("--atol", type=_positive_float, default=given, help="ODE: solver's absolute tolerance (1e-5)")
    e.add_argument("--seed", type=_seed, default=0)
    e.add_argument("--batch-size", type=_positive_int, default=256, help="examples per batch (fid: samples "
                                                                         "drawn per batch, seeds seed, seed+1, …)")

    d = sub.add_parser("demo", help="train a UNet DDPM on the digits and write pictures and bits/dim",
                       formatter_class=fmt)
    d.add_argument("--out", default="demo_out", type=_path, help="output directory")
    d.add_argument("--steps", type=_positive_int, default=None, help="training steps (default: the demo's)")
    d.add_argument("--no-progress", action="store_true")
    return p


def _one_line_warning(message, category, filename, lineno, line=None):
    return f"diffusionlab: warning: {message}\n"


def main(argv: list[str] | None = None) -> int:
    code = _run(argv)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        # Under torchrun, gloo's threads can abort the interpreter at exit ("terminate called without an
        # active exception") after the work is done; leaving without interpreter teardown avoids it.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def _run(argv: list[str] | None) -> int:
    warnings.formatwarning = _one_line_warning  # the CLI's warnings are for people: no source lines
    args = None
    try:
        args = build_parser().parse_args(argv)
        from . import commands  # deferred: keeps `--help` fast

        return getattr(commands, args.command.replace("-", "_"))(args) or 0
    except UserError as e:
        print(f"diffusionlab: error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    except BrokenPipeError:  # `diffusionlab eval ... | head`: the reader left; nothing to report
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except OSError as e:
        if e.errno not in _MACHINE_ERRNOS:
            raise  # not a condition of the machine or of a path the user gave: a bug, keep its traceback
        where = f" ({e.filename})" if e.filename else ""
        print(f"diffusionlab: error: {e.strerror or e}{where}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print(f"diffusionlab: interrupted; {_after_interrupt(args)}", file=sys.stderr)
        return 130


def _after_interrupt(args) -> str:
    """What a Ctrl-C left behind: outputs are written atomically at the end, checkpoints as training goes."""
    command = getattr(args, "command", None)
    if command in ("train", "demo"):
        from .training import checkpoint_exists

        run_dir = args.out if command == "train" else os.path.join(args.out, "run")
        if checkpoint_exists(run_dir):
            return f"the last checkpoint in {run_dir} is intact (continue with the same command" + (
                " plus --resume)" if command == "train" else ")")
        return "no checkpoint was written yet (start the same command again)"
    return "no output was written"


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
