"""Settings every test and notebook kernel shares (kernels inherit this process's environment)."""
import os

os.environ.setdefault("PYTHONWARNINGS", "ignore")  # warning texts carry per-process file names
os.environ.setdefault("OMP_NUM_THREADS", "1")       # same numbers as when outputs were stored
