"""Which environment variables a run may set (``resources.env``), and which of them are secret.

Two layers, checked in this order (``check_env_name``):

1. ``DENIED_ENV``: a hard deny-list no configuration lifts. Each entry is a glob over the
   upper-cased name, with the reason it is there. The rule behind every entry: a variable that
   loads code (the dynamic loader, interpreters, compilers and plugin loaders the job runs), that
   changes which program runs or how a shell reads a script, that points a library at files or
   directories outside the run (config it trusts, caches it loads code from, outputs it writes),
   that moves the job off its allocation, or that pyrecover or SLURM set themselves.
2. An allow-list the admin configures (``Settings.env_allow``), default ``DEFAULT_ENV_ALLOW``:
   what real training needs (threads, Hugging Face cache and offline mode, NCCL/torch.distributed
   debugging and tuning, the CUDA allocator). Entries may be globs (``MYLAB_*``); an entry that the
   deny-list matches is refused when the settings load.

A variable is secret (``is_secret``) when the run lists it in ``resources.secret_env`` or its name
ends like a credential (``SECRET_NAME_SUFFIXES``). Secret values never reach the database, the
sbatch script or an API reply: see ``controller/services/secrets.py``.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable

ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$", re.ASCII)
MAX_ENV_NAME_CHARS = 256

# (glob over the upper-cased name, why it is denied). Upper-casing first denies "ld_preload" too:
# nothing honours it, so refusing it costs nothing and spares reasoning about tools that fold case.
DENIED_ENV: tuple[tuple[str, str], ...] = (
    # --- set by pyrecover and SLURM
    ("PYRECOVER_*", "set by pyrecover for the worker (controller URL, run, attempt, token file)"),
    ("SLURM_*", "set by SLURM, and read back by srun/sbatch as input (SLURM_EXPORT_ENV, SLURM_CONF ...)"),
    ("SBATCH_*", "sbatch's input variables: options as if given on its command line"),
    ("SRUN_*", "srun's input variables: options of the step that starts the ranks"),
    ("SALLOC_*", "salloc's input variables"),
    ("SQUEUE_*", "squeue's input variables (format, clusters): the worker reads its deadline from squeue"),
    ("SCONTROL_*", "scontrol's input variables: the batch script calls scontrol"),
    ("SACCT_*", "sacct's input variables"),
    ("SPANK_*", "options handed to SLURM's SPANK plugins on the compute node"),
    ("MASTER_ADDR", "torch.distributed rendezvous, set per job: another host would receive every tensor"),
    ("MASTER_PORT", "torch.distributed rendezvous, set per job"),
    ("RANK", "the rank of each process, set per process"),
    ("LOCAL_RANK", "set per process"),
    ("WORLD_SIZE", "set per job"),
    ("LOCAL_WORLD_SIZE", "set per job"),
    ("GROUP_RANK", "torchelastic's rendezvous variables"),
    ("GROUP_WORLD_SIZE", "torchelastic's rendezvous variables"),
    ("ROLE_*", "torchelastic's rendezvous variables"),
    ("NODE_RANK", "rendezvous variable of launchers"),
    ("TORCHELASTIC_*", "torchelastic's agent settings"),
    # --- the dynamic loader and the C library
    (
        "LD_*",
        "the dynamic loader: LD_PRELOAD/LD_AUDIT load code into every process, LD_LIBRARY_PATH swaps "
        "libraries, LD_DEBUG_OUTPUT/LD_PROFILE_OUTPUT write files",
    ),
    ("DYLD_*", "the macOS loader, same as LD_*"),
    ("GLIBC_TUNABLES", "loader tunables parsed by every process at start (CVE-2023-4911)"),
    (
        "MALLOC_*",
        "glibc's malloc tunables (MALLOC_CHECK_, MALLOC_PERTURB_, MALLOC_ARENA_MAX ...), loader-level "
        "settings of every process",
    ),
    ("GCONV_PATH", "iconv loads converter modules (shared objects) from it: code execution (CVE-2021-4034)"),
    ("LOCPATH", "glibc reads compiled locale data from it"),
    ("NLSPATH", "message catalogs read from it"),
    ("LANG", "a locale name holding '/' is read as a path to locale data"),
    ("LANGUAGE", "message catalog selection (as LANG)"),
    ("LC_*", "a locale name holding '/' is read as a path to locale data"),
    ("TZDIR", "time-zone files read from it"),
    ("HOSTALIASES", "the resolver reads it as a host alias file: where reports and downloads go"),
    ("RES_OPTIONS", "resolver options"),
    ("LOCALDOMAIN", "resolver search list"),
    ("TERMINFO*", "curses reads compiled terminal descriptions from it"),
    # --- shells (the batch script is bash; srun, the shim and subprocesses start shells too)
    ("PATH", "which programs run: python, srun, scontrol, squeue, compilers"),
    ("BASH_ENV", "bash runs this file before every non-interactive script"),
    ("ENV", "sh, dash and bash in POSIX mode run this file"),
    (
        "BASH_*",
        "bash's own variables: BASH_FUNC_* exported functions replace commands, BASH_LOADABLES_PATH loads"
        " builtins, BASH_XTRACEFD",
    ),
    ("SHELLOPTS", "turns shell options on in every bash (xtrace evaluates PS4)"),
    ("BASHOPTS", "turns shopt options on in every bash"),
    ("IFS", "word splitting of every unquoted expansion in every script"),
    ("PS?", "prompt strings are expanded with command substitution (PS4 under xtrace, in any script)"),
    ("PROMPT_COMMAND", "run before each prompt"),
    ("CDPATH", "changes where 'cd' in a script goes"),
    ("GLOBIGNORE", "changes what globs in a script match"),
    ("EXECIGNORE", "changes command lookup"),
    ("FPATH", "function autoload path of ksh and zsh"),
    ("POSIXLY_CORRECT", "changes how bash and GNU tools parse"),
    ("HISTFILE", "a shell writes its history there"),
    ("INPUTRC", "readline reads key bindings (which can run commands) from it"),
    ("SHELL", "the shell other programs start"),
    # --- identity, home directory and per-user configuration
    (
        "HOME",
        "every tool's dot-files: ~/.local holds Python's user site-packages (usercustomize runs at start-"
        "up), ~/.config, ~/.cache, ~/.triton, ~/.nv",
    ),
    ("XDG_*", "config and cache base directories (pip, Hugging Face and its module cache, fontconfig, ...)"),
    (
        "USER",
        "getpass.getuser() reads it: torch compile caches live in /tmp/torchinductor_<user>, another "
        "account's",
    ),
    ("LOGNAME", "as USER"),
    ("LNAME", "as USER"),
    ("USERNAME", "as USER"),
    ("TMPDIR", "where libraries write temporary files, compiled kernels and caches they load again"),
    ("TMP", "as TMPDIR"),
    ("TEMP", "as TMPDIR"),
    ("TEMPDIR", "as TMPDIR"),
    # --- interpreters the job may run
    (
        "PYTHON*",
        "PYTHONPATH, PYTHONHOME, PYTHONSTARTUP, PYTHONUSERBASE load code; PYTHONPYCACHEPREFIX reads "
        "bytecode from elsewhere; PYTHONWARNINGS and PYTHONBREAKPOINT import modules",
    ),
    ("VIRTUAL_ENV", "selects another Python environment for tools that honour it"),
    ("CONDA_*", "selects another conda environment (tools look for libraries and compilers there)"),
    ("PERL*", "PERL5LIB, PERL5OPT, PERLLIB, PERL5DB load code into perl"),
    ("RUBY*", "RUBYOPT, RUBYLIB load code into ruby"),
    ("NODE_*", "NODE_OPTIONS (--require), NODE_PATH load code into node"),
    ("JAVA_TOOL_OPTIONS", "loads agents into every JVM"),
    ("_JAVA_OPTIONS", "options of every JVM"),
    ("JDK_JAVA_OPTIONS", "options of every JVM"),
    ("CLASSPATH", "where the JVM loads classes from"),
    ("LUA_*", "LUA_PATH, LUA_CPATH, LUA_INIT load code into lua (Lmod is written in it)"),
    ("TCLLIBPATH", "where tclsh loads packages from (environment modules are Tcl)"),
    ("R_*", "R_PROFILE, R_ENVIRON, R_LIBS load code into R"),
    ("MODULEPATH", "environment modules load modulefiles (code) from it"),
    ("MODULESHOME", "environment modules"),
    ("LMOD_*", "Lmod's settings"),
    ("MODULES_*", "environment modules' settings"),
    ("_LMFILES_", "the modulefiles loaded"),
    ("LOADEDMODULES", "the modules loaded"),
    # --- compilers: torch.compile (Inductor), Triton and C++ extensions build and load code at run time
    ("CC", "the C compiler Triton and Inductor run"),
    ("CXX", "the C++ compiler Inductor and torch.utils.cpp_extension run"),
    ("CPP", "the C preprocessor"),
    ("LD", "the linker"),
    ("AS", "the assembler"),
    ("AR", "the archiver"),
    ("CUDACXX", "the CUDA compiler"),
    ("NVCC*", "nvcc and its NVCC_PREPEND_FLAGS/NVCC_APPEND_FLAGS (-ccbin runs any program)"),
    ("CFLAGS", "compiler flags: -fplugin loads code, -B chooses the programs gcc runs"),
    ("CXXFLAGS", "as CFLAGS"),
    ("CPPFLAGS", "as CFLAGS"),
    ("LDFLAGS", "linker flags: -Wl,-rpath and --wrap change what a built extension loads"),
    ("CPATH", "header search path: a shadowed header compiles other code into a kernel"),
    ("C_INCLUDE_PATH", "as CPATH"),
    ("CPLUS_INCLUDE_PATH", "as CPATH"),
    ("LIBRARY_PATH", "library search path of the linker"),
    ("COMPILER_PATH", "where gcc looks for cc1, as and ld"),
    ("GCC_*", "GCC_EXEC_PREFIX and friends: where gcc looks for its programs"),
    ("CCACHE_*", "ccache's settings (CCACHE_PREFIX runs a program before every compile)"),
    ("MAKE", "the make program"),
    ("MAKEFLAGS", "options of every make"),
    ("PKG_CONFIG*", "where build tools find library flags"),
    (
        "TRITON_*",
        "Triton: TRITON_PTXAS_PATH and TRITON_LIBCUDA_PATH run or load binaries, TRITON_CACHE_DIR holds "
        "kernels it loads",
    ),
    (
        "TORCHINDUCTOR_*",
        "Inductor: TORCHINDUCTOR_CACHE_DIR holds generated Python and C++ it imports; other keys change "
        "generated code",
    ),
    ("TORCH_EXTENSIONS_DIR", "compiled torch extensions are loaded from it"),
    ("TORCH_HOME", "torch.hub code and weights"),
    ("TORCH_COMPILE_DEBUG*", "torch.compile debug output written outside the run"),
    ("TORCH_LOGS_OUT", "torch logging written to a file of the user's choice"),
    ("TORCH_TRACE", "structured trace written to a directory of the user's choice"),
    ("PYTORCH_KERNEL_CACHE_PATH", "compiled fuser kernels loaded from it"),
    ("PYTORCH_TUNABLEOP_*", "TunableOp reads and writes a results file it trusts"),
    ("HF_MODULES_CACHE", "transformers puts it on sys.path and imports modules from it"),
    ("HF_HOME", "moves the Hugging Face module cache (on sys.path) and token file"),
    ("MPLCONFIGDIR", "matplotlibrc may name a backend module to import"),
    # --- GPUs and the allocation
    ("CUDA_VISIBLE_DEVICES", "SLURM sets the allocation's GPUs: another value uses devices outside it"),
    ("NVIDIA_*", "the container runtime's GPU selection and capabilities"),
    ("ROCR_VISIBLE_DEVICES", "as CUDA_VISIBLE_DEVICES (AMD)"),
    ("HIP_VISIBLE_DEVICES", "as CUDA_VISIBLE_DEVICES (AMD)"),
    ("GPU_DEVICE_ORDINAL", "as CUDA_VISIBLE_DEVICES (SLURM sets it)"),
    ("ZE_AFFINITY_MASK", "as CUDA_VISIBLE_DEVICES (Intel)"),
    ("CUDA_HOME", "where extension builders and Triton find nvcc and ptxas"),
    ("CUDA_ROOT", "as CUDA_HOME"),
    ("ROCM_*", "where hipcc and the ROCm libraries are found"),
    ("HIP_*", "HIP's compiler and library paths"),
    ("CUDA_INJECTION*", "the CUDA runtime loads this library into the process"),
    ("NVTX_INJECTION*", "NVTX loads this library into the process"),
    ("NCCL_*PLUGIN*", "NCCL loads libnccl-net/tuner/profiler plugins (shared objects) by this name"),
    (
        "NCCL_*FILE*",
        "NCCL reads (NCCL_TOPO_FILE, NCCL_CONF_FILE) or writes (NCCL_DEBUG_FILE, NCCL_*_DUMP_FILE) a file"
        " of the user's choice",
    ),
    ("OMP_TOOL*", "the OpenMP tools interface loads OMP_TOOL_LIBRARIES and writes OMP_TOOL_VERBOSE_INIT"),
    ("OMPI_*", "Open MPI's MCA parameters name component paths it loads plugins from"),
    ("OPAL_*", "Open MPI's base layer"),
    ("PRTE_*", "the PMIx runtime"),
    ("PMIX_*", "PMIx (srun --mpi=pmix) loads plugins and reads its server's address from these"),
    ("PMI_*", "set by srun for the ranks' process management"),
    ("HWLOC_*", "hwloc loads plugins (HWLOC_PLUGINS_PATH) and reads topology files"),
    # --- libraries that load code or trust configuration
    ("OPENSSL_*", "OPENSSL_CONF loads engines and providers (code); OPENSSL_MODULES"),
    ("SSL_CERT_*", "which certificate authorities TLS trusts (downloads, reports)"),
    ("REQUESTS_CA_BUNDLE", "as SSL_CERT_FILE, for requests"),
    ("CURL_CA_BUNDLE", "as SSL_CERT_FILE, for curl and huggingface_hub"),
    ("KRB5*", "Kerberos configuration loads plugins"),
    (
        "GIT_*",
        "GIT_SSH_COMMAND, GIT_EXEC_PATH, GIT_CONFIG_* run programs (huggingface_hub and torch.hub call "
        "git)",
    ),
    ("SSH_*", "SSH_ASKPASS runs a program"),
    ("PAGER", "a program other tools run"),
    ("EDITOR", "a program other tools run"),
    ("VISUAL", "a program other tools run"),
    ("BROWSER", "Python's webbrowser module runs it"),
    ("LESSOPEN", "less runs it as an input filter"),
    ("LESSCLOSE", "less runs it"),
    # --- the whole class of variables that name a file or directory: a library reads config it
    # trusts, loads code or writes output there, and which names a library reads is open-ended.
    (
        "*_PATH",
        "names files or directories a library reads, loads or writes (CUDA_CACHE_PATH, FI_PROVIDER_PATH, "
        "HWLOC_PLUGINS_PATH ...)",
    ),
    ("*_PATHS", "as *_PATH"),
    (
        "*_DIR",
        "names a directory a library reads, loads from or writes to (caches of compiled code, debug "
        "dumps)",
    ),
    ("*_DIRS", "as *_DIR"),
    ("*_HOME", "an installation or config root a library loads from"),
    ("*_ROOT", "as *_HOME"),
    ("*_PREFIX", "as *_HOME (GMON_OUT_PREFIX writes files)"),
    ("*_FILE", "a file a library reads or writes (TORCH_NCCL_DEBUG_INFO_TEMP_FILE, UCX_LOG_FILE ...)"),
    ("*_FILES", "as *_FILE"),
    ("*_FILENAME", "as *_FILE"),
    ("*_LIBRARY", "a library to load"),
    ("*_LIBRARIES", "libraries to load (OMP_TOOL_LIBRARIES)"),
    ("*_PLUGIN", "a plugin to load"),
    ("*_PLUGINS", "plugins to load"),
)  # fmt: skip
"""The hard deny-list: no configuration lifts it (docs/architecture.md, "Run fields")."""

DEFAULT_ENV_ALLOW: tuple[str, ...] = (
    # threads
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "TOKENIZERS_PARALLELISM",
    # Hugging Face: an offline cluster, a shared cache, gated tokenizers
    "HF_HUB_OFFLINE",
    "HF_DATASETS_OFFLINE",
    "TRANSFORMERS_OFFLINE",
    "HF_HUB_CACHE",
    "HF_HUB_DISABLE_TELEMETRY",
    "HF_TOKEN",
    # NCCL and torch.distributed: debugging and the network to use
    "NCCL_DEBUG",
    "NCCL_DEBUG_SUBSYS",
    "NCCL_SOCKET_IFNAME",
    "NCCL_IB_HCA",
    "NCCL_IB_DISABLE",
    "NCCL_P2P_DISABLE",
    "NCCL_P2P_LEVEL",
    "NCCL_NET_GDR_LEVEL",
    "NCCL_ASYNC_ERROR_HANDLING",
    "GLOO_SOCKET_IFNAME",
    "TORCH_NCCL_ASYNC_ERROR_HANDLING",
    "TORCH_NCCL_BLOCKING_WAIT",
    "TORCH_DISTRIBUTED_DEBUG",
    "TORCH_CPP_LOG_LEVEL",
    "TORCH_SHOW_CPP_STACKTRACES",
    "TORCH_LOGS",
    # CUDA
    "CUDA_LAUNCH_BLOCKING",
    "CUDA_DEVICE_MAX_CONNECTIONS",
    "CUDA_MODULE_LOADING",
    "PYTORCH_CUDA_ALLOC_CONF",
)
"""What real training needs; ``Settings.env_allow`` replaces it (docs/architecture.md, "Run fields")."""

SECRET_NAME_SUFFIXES: tuple[str, ...] = ("_KEY", "_TOKEN", "_SECRET", "_PASSWORD", "_PASSWD", "_CREDENTIALS")
"""A variable whose name ends like this is secret even if the run does not say so."""


def denied_because(name: str) -> str | None:
    """Why ``name`` is on the hard deny-list, or ``None`` when it is not."""
    upper = name.upper()
    for pattern, why in DENIED_ENV:
        if fnmatch.fnmatchcase(upper, pattern):
            return why
    return None


def allowed(name: str, allow: Iterable[str]) -> bool:
    """Whether ``name`` matches an entry of the admin's allow-list (exact names or globs)."""
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in allow)


def check_env_name(name: str, allow: Iterable[str] | None) -> None:
    """``ValueError`` saying why ``name`` may not be set; ``allow=None`` checks the hard rules only."""
    if len(name) > MAX_ENV_NAME_CHARS:
        raise ValueError(f"environment variable names are at most {MAX_ENV_NAME_CHARS} characters")
    if not ENV_NAME_RE.fullmatch(name):
        raise ValueError(f"environment variable name {name!r} is not a valid identifier")
    why = denied_because(name)
    if why is not None:
        raise ValueError(f"environment variable {name!r} may not be set by a run: {why}")
    if allow is not None and not allowed(name, allow):
        raise ValueError(
            f"environment variable {name!r} is not on this controller's allow-list "
            "(an admin can add it to the env_allow setting)"
        )


def is_secret(name: str, declared: Iterable[str] = ()) -> bool:
    """Whether the value of ``name`` is secret: declared so by the run, or named like a credential."""
    return name in set(declared) or name.upper().endswith(SECRET_NAME_SUFFIXES)


def check_allow_list(entries: Iterable[str]) -> list[str]:
    """The admin's allow-list, or ``ValueError`` for an entry the hard deny-list covers."""
    out = []
    for entry in entries:
        if not re.fullmatch(r"[A-Za-z0-9_*?]+", entry, re.ASCII):
            raise ValueError(f"env_allow: {entry!r} must be a variable name or a glob of one")
        # A glob is refused if it could name a denied variable, tested on the glob itself (a
        # pattern such as 'LD_*' matches its own text) and on one concrete name it stands for.
        concrete = entry.replace("*", "X").replace("?", "X")
        for name in (entry, concrete):
            why = denied_because(name)
            if why is not None:
                raise ValueError(f"env_allow: {entry!r} is on the hard deny-list ({why})")
        out.append(entry)
    return out
