"""Where branch jobs run: here, one after another (default), or as Ray tasks on an existing cluster.

A job is a picklable callable plus its argument; each writes only its own branch folder of the shared
OUT, and the driver alone writes `release.json`, so jobs never contend for a file.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from camelid.errors import CamelidError


def run_local(job: Callable, args: list) -> Iterator:
    for a in args:
        yield job(a)


def run_ray(job: Callable, args: list, address: str | None = None, gpus: int = 0) -> Iterator:
    """One Ray task per branch (`gpus` GPUs each), results yielded as tasks finish."""
    try:
        import ray
    except ImportError:
        raise CamelidError("--executor ray needs Ray: pip install 'camelid[ray]'") from None
    if not ray.is_initialized():
        ray.init(address=address, ignore_reinit_error=True)
    remote = ray.remote(num_gpus=gpus)(job)
    pending = [remote.remote(a) for a in args]
    while pending:
        done, pending = ray.wait(pending, num_returns=1)
        yield ray.get(done[0])


def run(job: Callable, args: list, executor: str = "local", address: str | None = None, gpus: int = 0) -> Iterator:
    if executor == "local":
        return run_local(job, args)
    if executor == "ray":
        return run_ray(job, args, address, gpus)
    raise CamelidError(f"--executor must be local or ray, got {executor!r}")
