"""The commands and code in the READMEs work.

Every fenced ``bash`` block is split into commands; each command is looked up in
:data:`POLICY` by its module (``python -m MODULE``), script or program, and is either run
(quick and safe, with substitutions: ``--max-frames 5``, outputs under ``tmp_path``, a
synthetic video or image folder where the README names one the checkout does not have) or
checked (``MODULE --help`` exits 0 and lists every flag the command uses) when it cannot run
in CI (a camera, a display, training, TVM builds). A command whose module is not in the table
fails, so a new README command needs a policy here. ``python`` blocks run in a temporary
folder with their model path and image files substituted; ``ini`` blocks must parse and
name a command that exists.
"""
from __future__ import annotations

import ast
import configparser
import glob
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import cv2
import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ("README.md", "runtime/integrations/README.md", "benchmarks/README.md", "models/default/TRAINING.md",
        "native/README.md")
MAX_FRAMES = 5
TIMEOUT = 180

# Every command module (python -m ...) whose --help must work.
HELP_MODULES = ("runtime.track", "export", "export.tune", "train_mx.train", "train_mx.launch", "train_mx.report",
                "train_mx.feature_stats",
                "benchmarks.accuracy", "benchmarks.per_frame", "benchmarks.features", "benchmarks.soak",
                "benchmarks.gpu_pack", "benchmarks.oracle", "runtime.integrations.vot")

# What to do with a README command, keyed by module (python -m X), script (script:PATH) or program.
#   setup: environment set-up the test already runs inside; not run
#   pip:   not run; every extra it installs ('.[a,b]') must exist in pyproject.toml
#   track: runtime.track, run (see _track_argv); camera / --show commands are only checked
#   check: not run; `--help` works and lists every flag used
#   skip:  not run (the block still has to pass `bash -n`); say why
POLICY = {
    "venv": ("setup", "creates the environment this test runs in"),
    "pip": ("pip", "installs packages (no network in tests): its extras must exist"),
    "pytest": ("check", "the test suite itself (CI runs it)"),
    "runtime.track": ("track", "run with --max-frames 5 and outputs in a temporary folder"),
    "export": ("check", "exports and compiles TVM libraries for several targets: minutes"),
    "export.tune": ("check", "MetaSchedule tuning: minutes to hours"),
    "train_mx.train": ("check", "offline training: hours"),
    "train_mx.launch": ("check", "distributed training; the arguments after -- are checked against the worker module"),
    "train_mx.report": ("check", "needs finished training runs"),
    "train_mx.feature_stats": ("check", "rewrites a model folder after a training run"),
    "benchmarks.accuracy": ("check", "tracks the whole development set"),
    "benchmarks.per_frame": ("check", "tracks the whole development set"),
    "benchmarks.features": ("check", "times every bucket on every backend: minutes"),
    "benchmarks.soak": ("check", "10,000 frames: minutes"),
    "benchmarks.gpu_pack": ("check", "builds CUDA/llvm libraries and the native runner: minutes"),
    "benchmarks.oracle": ("check", "tracks the whole development set"),
    "runtime.integrations.vot": ("check", "started by the VOT toolkit, speaks TraX on stdin/stdout"),
    "script:examples/got10k_eval.py": ("check", "needs a benchmark dataset on disk"),
    # shell programs
    "sh:cd": ("setup", "changes directory; the commands are run from the checkout"),
    "sh:export": ("setup", "sets an environment variable"),
    "sh:cmake": ("skip", "native build against TVM's C++ runtime: not built by the Python test suite"),
    "sh:ctest": ("skip", "native tests: not built by the Python test suite"),
    "sh:make": ("skip", "native build: not built by the Python test suite"),
    "sh:mdtrack_features": ("skip", "the native runner: built and run by test_native"),
    "sh:sudo": ("skip", "installs system packages"),
    "sh:git": ("skip", "fetches TVM's source (network) for the aarch64 runtime build"),
    "sh:rm": ("skip", "replaces the shipped model with a freshly trained one"),
    "sh:cp": ("skip", "replaces the shipped model with a freshly trained one"),
    "sh:run.sh": ("skip", "the GPU pack's script: runs on a GPU machine (its CPU part is tested in test_native)"),
}

# Python blocks matching a pattern are compiled and their imports resolved, but not run.
PY_CHECK_ONLY = (
    (re.compile(r"\bExperiment\w+\("), "runs a toolkit experiment on a benchmark dataset"),
)

SHELL_SEPARATORS = {"&&", "||", ";"}
SHELL_UNSUPPORTED = {"|", "&", ">", ">>", "<", "(", ")"}  # pipes, redirections, subshells


# --------------------------------------------------------------------------- parsing


def fenced_blocks(lang: str):
    """``(doc, line, code)`` for every fenced block of ``lang`` in :data:`DOCS`."""
    out = []
    for doc in DOCS:
        path = ROOT / doc
        if not path.is_file():
            continue
        lines = path.read_text(encoding="utf-8").splitlines()
        i = 0
        while i < len(lines):
            m = re.match(r"^(\s*)(`{3,}|~{3,})\s*([\w+-]*)", lines[i])
            if not m:
                i += 1
                continue
            fence, block_lang, start = m.group(2), m.group(3).lower(), i + 1
            j = start
            while j < len(lines) and not lines[j].strip().startswith(fence):
                j += 1
            if block_lang == lang:
                out.append((doc, start, "\n".join(lines[start:j])))
            i = j + 1
    return out


def shell_commands(code: str):
    """argv lists of a bash block: continuation lines joined, comments dropped, split on && || ;."""
    commands = []
    for line in code.replace("\\\n", " ").splitlines():
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)  # `a;b` -> a ; b
        lexer.whitespace_split = True
        tokens = list(lexer)
        current = []
        for tok in tokens:
            assert tok not in SHELL_UNSUPPORTED, (
                f"README command line {line!r} uses {tok!r}: tests/test_docs.py runs simple commands only; "
                "teach shell_commands about it or write the command without it")
            if tok in SHELL_SEPARATORS:
                if current:
                    commands.append(current)
                current = []
            else:
                current.append(tok)
        if current:
            commands.append(current)
    return commands


def _is_python(prog: str) -> bool:
    name = prog.rsplit("/", 1)[-1]
    return re.fullmatch(r"python(3(\.\d+)?)?", name) is not None


def split_env(argv):
    """Leading ``NAME=VALUE`` words of a command (its environment) and the rest."""
    env = {}
    while argv and re.fullmatch(r"[A-Za-z_]\w*=.*", argv[0]):
        name, value = argv[0].split("=", 1)
        env[name] = value
        argv = argv[1:]
    return env, argv


def classify(argv):
    """``(key, args)``: the policy key of a command and the arguments after it.

    ``python -m MODULE`` -> ``MODULE``; ``python path/x.py`` -> ``script:path/x.py``;
    ``pip`` -> ``pip``; any other program -> ``sh:PROGRAM``.
    """
    _, argv = split_env(argv)
    if not argv:
        return "sh:", []
    prog = argv[0]
    if _is_python(prog) and len(argv) > 1:
        if argv[1] == "-m" and len(argv) > 2:
            return argv[2], argv[3:]
        if argv[1].endswith(".py"):
            return f"script:{argv[1]}", argv[2:]
    if re.fullmatch(r"pip3?", prog.rsplit("/", 1)[-1]):
        return "pip", argv[1:]
    return f"sh:{prog.rsplit('/', 1)[-1]}", argv[1:]


def _command_params():
    params = []
    for doc, line, code in fenced_blocks("bash"):
        try:
            commands = shell_commands(code)
        except (AssertionError, ValueError) as e:  # reported by the test, not as a collection error
            params.append(pytest.param(e, id=f"{doc}:{line}:unparsed"))
            continue
        for k, argv in enumerate(commands):
            key, _ = classify(argv)
            params.append(pytest.param(argv, id=f"{doc}:{line}:{k}:{key}"))
    return params


def _block_params(lang):
    return [pytest.param(code, id=f"{doc}:{line}") for doc, line, code in fenced_blocks(lang)]


# --------------------------------------------------------------------------- helpers


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    env["MPLBACKEND"] = "Agg"
    return env


def _run(argv, cwd=ROOT, timeout=TIMEOUT, env=None):
    return subprocess.run(argv, cwd=cwd, env={**_env(), **(env or {})}, capture_output=True, text=True,
                          timeout=timeout)


_HELP = {}


def help_text(key: str) -> str:
    """``--help`` output of a module or script (cached); the command must exit 0."""
    if key not in _HELP:
        if key.startswith("script:"):
            argv = [sys.executable, str(ROOT / key[len("script:"):]), "--help"]
        else:
            argv = [sys.executable, "-m", key, "--help"]
        r = _run(argv)
        assert r.returncode == 0, f"{' '.join(argv)} exited {r.returncode}:\n{r.stderr[-2000:]}"
        _HELP[key] = r.stdout
    return _HELP[key]


def _flags(args):
    return [a.split("=", 1)[0] for a in args if re.match(r"^--?[A-Za-z]", a)]


def assert_flags_listed(key: str, args) -> None:
    text = help_text(key)
    missing = [f for f in _flags(args) if not re.search(rf"(?<![\w-]){re.escape(f)}(?![\w-])", text)]
    assert not missing, f"{key}: flag(s) {missing} used in the README are not in its --help"


def check_command(key: str, args) -> None:
    if key == "train_mx.launch" and "--" in args:  # launcher flags, then the worker's
        cut = args.index("--")
        own, worker_args = args[:cut], args[cut + 1:]
        worker = own[own.index("--module") + 1] if "--module" in own else "train_mx.train"
        assert_flags_listed(key, own)
        assert_flags_listed(worker, worker_args)
        return
    assert_flags_listed(key, args)


def _pyproject_extras() -> set:
    import tomllib

    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return set(data["project"].get("optional-dependencies", {}))


def check_pip(args) -> None:
    assert "install" in args, f"pip command without install: {args}"
    extras = set()
    for a in args:
        m = re.fullmatch(r"(?:\.|\./|mdtrack)\[([\w,\- ]+)\]", a.strip())  # .[a,b] ./[a] mdtrack[a]
        if m:
            extras |= {e.strip() for e in m.group(1).split(",") if e.strip()}
    unknown = extras - _pyproject_extras()
    assert not unknown, f"the README installs extra(s) {sorted(unknown)} that pyproject.toml does not define"


# --------------------------------------------------------------------------- fixtures


def _synthetic(n=8, size=(320, 240), seed=4):
    from runtime.synthetic import make_sequence

    return make_sequence(n_frames=n, size=size, seed=seed, distractors=0)


class DocFixtures:
    """Stand-ins for inputs a README names but a checkout does not have (made on demand)."""

    def __init__(self, tmp: Path):
        self.tmp = tmp

    def video(self, name: str) -> str:
        path = self.tmp / "inputs" / Path(name).name
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            seq = _synthetic()
            fourcc = cv2.VideoWriter_fourcc(*("MJPG" if path.suffix.lower() == ".avi" else "mp4v"))
            writer = cv2.VideoWriter(str(path), fourcc, 30, seq.frame_size)
            assert writer.isOpened(), f"cannot write {path}"
            for f in seq:
                writer.write(f.image)
            writer.release()
        return str(path)

    def images(self, pattern: str) -> str:
        """An absolute glob like ``pattern`` that matches synthetic frames."""
        folder = self.tmp / "inputs" / (Path(pattern).parent.name or "frames")
        ext = Path(pattern).suffix if Path(pattern).suffix.lower() in (".jpg", ".jpeg", ".png", ".bmp") else ".jpg"
        if not folder.is_dir():
            folder.mkdir(parents=True)
            for f in _synthetic():
                cv2.imwrite(str(folder / f"{f.index + 1:04d}{ext}"), f.image)
        return str(folder / f"*{ext}")

    def sequence(self, name: str) -> str:
        from runtime.synthetic import write_otb

        folder = self.tmp / "inputs" / Path(name).name
        if not folder.is_dir():
            write_otb(_synthetic(), folder, ext=".jpg")
        return str(folder)


@pytest.fixture()
def doc_fixtures(tmp_path):
    return DocFixtures(tmp_path)


# --------------------------------------------------------------------------- runtime.track


OUTPUT_FLAGS = ("--out", "--jsonl", "--save-video", "--plot")


def _track_argv(args, fx: DocFixtures):
    """README arguments -> (arguments to run, {output flag: path}) or (None, reason) when it cannot run."""
    if "--camera" in args:
        return None, "needs a camera"
    if "--show" in args or "--select" in args:
        return None, "needs a display"
    out, outputs, i = [], {}, 0
    while i < len(args):
        a = args[i]
        value = args[i + 1] if i + 1 < len(args) else None
        if a in OUTPUT_FLAGS and value is not None:
            path = fx.tmp / "outputs" / Path(value).name
            path.parent.mkdir(exist_ok=True)
            outputs[a] = path
            out += [a, str(path)]
        elif a == "--max-frames":
            pass  # replaced below
        elif a == "--video" and value is not None:
            out += [a, value if (ROOT / value).is_file() else fx.video(value)]
        elif a == "--images" and value is not None:
            out += [a, value if glob.glob(str(ROOT / value)) else fx.images(value)]
        elif a == "--sequence" and value is not None:
            out += [a, value if (ROOT / value).is_dir() else fx.sequence(value)]
        elif a == "--model" and value is not None:
            # a model the block trains first (e.g. models/mine): the shipped one stands in
            out += [a, value if (ROOT / value).is_dir() else str(ROOT / "models" / "default")]
        else:
            out.append(a)
            i += 1
            continue
        i += 2
    return out + ["--max-frames", str(MAX_FRAMES)], outputs


def run_track(args, fx: DocFixtures, env=None) -> None:
    argv, outputs = _track_argv(args, fx)
    if argv is None:
        check_command("runtime.track", args)
        return
    r = _run([sys.executable, "-m", "runtime.track", *argv], env=env)
    assert r.returncode == 0, f"runtime.track {' '.join(argv)} exited {r.returncode}:\n{r.stderr[-3000:]}"
    summary = r.stdout.strip().splitlines()[-1]
    assert summary.startswith(f"frames {MAX_FRAMES} "), summary
    for flag, path in outputs.items():
        assert path.is_file() and path.stat().st_size > 0, f"{flag} {path} was not written"
    if "--out" in outputs:
        assert len(outputs["--out"].read_text().splitlines()) == MAX_FRAMES


# --------------------------------------------------------------------------- tests


def test_docs_have_blocks():
    """The parser finds the README's blocks (guards against a silently empty parametrisation)."""
    assert fenced_blocks("bash"), "no ```bash block found in README.md"
    assert fenced_blocks("python"), "no ```python block found in README.md"
    assert any(classify(c)[0] == "runtime.track" for c in (cmd for _, _, code in fenced_blocks("bash")
                                                           for cmd in shell_commands(code)))


def test_parsers():
    code = ("# comment\npython3 -m venv .venv && .venv/bin/pip install -q -e '.[a,b]' && X=1 .venv/bin/python \\\n"
            "    -m runtime.track --images 'f/*.jpg'  # trailing\ncmake -S . -B build; python examples/x.py --y\n")
    cmds = shell_commands(code)
    assert [classify(c)[0] for c in cmds] == ["venv", "pip", "runtime.track", "sh:cmake", "script:examples/x.py"]
    assert classify(cmds[2])[1] == ["--images", "f/*.jpg"] and split_env(cmds[2])[0] == {"X": "1"}
    assert _flags(["--a=1", "-q", "-", "--", "3", "-1"]) == ["--a", "-q"]


@pytest.mark.parametrize("code", _block_params("bash"))
def test_bash_block_is_valid_shell(code):
    r = subprocess.run(["bash", "-n"], input=code, capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("argv", _command_params())
def test_readme_command(argv, doc_fixtures):
    if isinstance(argv, Exception):
        pytest.fail(f"cannot parse the block: {argv}")
    key, args = classify(argv)
    assert key in POLICY, (f"README command {' '.join(argv)!r} ({key}) has no policy in tests/test_docs.py "
                           "POLICY: say whether to run or only check it")
    action, reason = POLICY[key]
    if action in ("setup", "skip"):
        pytest.skip(f"not run here ({action}): {reason}")
    if action == "pip":
        check_pip(args)
    elif action == "track":
        run_track(args, doc_fixtures, env=split_env(argv)[0])
    else:
        check_command(key, args)


def _image_literals(code: str):
    names = []
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) \
                and re.fullmatch(r"[\w./-]+\.(jpg|jpeg|png|bmp)", node.value, re.IGNORECASE):
            if node.value not in names:
                names.append(node.value)
    return names


def _check_imports(code: str) -> None:
    """Every ``from X import Y`` / ``import X`` of the block resolves."""
    import importlib

    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.ImportFrom) and node.module:
            mod = pytest.importorskip(node.module) if node.module.split(".")[0] in ("got10k", "trax") \
                else importlib.import_module(node.module)
            for alias in node.names:
                assert hasattr(mod, alias.name) or importlib.util.find_spec(f"{node.module}.{alias.name}"), \
                    f"{node.module} has no {alias.name}"
        elif isinstance(node, ast.Import):
            for alias in node.names:
                importlib.import_module(alias.name)


@pytest.mark.parametrize("code", _block_params("python"))
def test_python_block(code, tiny_model, tmp_path):
    compile(code, "<README block>", "exec")
    for pattern, _reason in PY_CHECK_ONLY:
        if pattern.search(code):
            _check_imports(code)
            return
    # substitutions: the model folder -> the test model, image files -> synthetic frames in cwd
    code = re.sub(r"""(["'])models/default\1""", repr(str(tiny_model)), code)
    seq = _synthetic(n=max(2, len(_image_literals(code))))
    for name, frame in zip(_image_literals(code), seq):
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        assert cv2.imwrite(str(path), frame.image)
    r = _run([sys.executable, "-c", code], cwd=tmp_path)
    assert r.returncode == 0, f"README python block failed:\n{r.stderr[-3000:]}"


@pytest.mark.parametrize("code", _block_params("ini"))
def test_ini_block(code):
    """trackers.ini snippets parse, and their command exists."""
    cfg = configparser.ConfigParser(interpolation=None)
    cfg.read_string(code)
    assert cfg.sections()
    for name in cfg.sections():
        section = cfg[name]
        assert {"protocol", "command"} <= set(section), f"[{name}] needs protocol and command"
        if section["protocol"] == "traxpython" and re.fullmatch(r"[\w.]+", section["command"]):
            help_text(section["command"])


@pytest.mark.parametrize("module", HELP_MODULES)
def test_command_help(module):
    text = help_text(module)
    assert "usage:" in text
