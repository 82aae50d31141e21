"""MAE reproduction harness."""
# First thing, before anything imports torch: the OpenMP wait policy is read once, when torch loads the
# runtime (mae/engine/threads.py: runs sharing the cores otherwise collapse). A no-op if the user set one.
from mae.engine.threads import configure_openmp_env as _configure_openmp_env

_configure_openmp_env()
