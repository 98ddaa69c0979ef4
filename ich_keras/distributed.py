"""Training across processes and hosts: JAX's distributed runtime under `keras.distribution.DataParallel`.

Every process runs the same `python -m ich_keras.fit` with `train.distribution = "data_parallel"` and Keras' own
settings in its environment:

    KERAS_DISTRIBUTION_JOB_ADDRESSES=host0:1234   # the coordinator (process 0), or all addresses comma-separated
    KERAS_DISTRIBUTION_NUM_PROCESSES=2
    KERAS_DISTRIBUTION_PROCESS_ID=0               # 0 .. NUM_PROCESSES - 1, one per process

The model is replicated over every device of every process, each process reads its share of each global batch
(Keras shards the tf.data pipeline), and only process 0 writes the run directory. The run directory must be on a
disk every process sees: the others read the resume state and, at the end, the kept checkpoints from it. A process
that fails while the run starts stops the others with it (`all_or_none`). One that dies while the job trains (kill -9,
out of memory) breaks the others' collectives: process 0 then ends at once with one line saying so (`lost_peer`,
`end_after_lost_peer`), as does any other process while process 0 lives; when process 0 itself died, XLA aborts the
others from its own thread (the coordination service ran in process 0), before Python can say anything.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import os
import re
import sys
import weakref
from typing import NoReturn

import numpy as np

NUM_PROCESSES_ENV = "KERAS_DISTRIBUTION_NUM_PROCESSES"
PEER_LOST_STATUS = 1  # not the user's mistake, but no traceback either (as a full disk)
# What a collective raises once another process of the job died: gloo's TCP transport finds its connection reset
# or closed (a JaxRuntimeError from a train step, a ValueError from multihost_utils).
_BROKEN_CONNECTION = re.compile(r"Gloo \w+ failed|Connection reset by peer|Connection closed by peer")
_predict_functions: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def requested_processes() -> int:
    """The process count the environment asks for (1 when unset)."""
    value = os.environ.get(NUM_PROCESSES_ENV, "1")
    try:
        count = int(value)
    except ValueError:
        count = 0
    if count < 1:
        from ich_keras.errors import UserError

        raise UserError(f"{NUM_PROCESSES_ENV} must be a positive integer. Received: {NUM_PROCESSES_ENV}={value!r}")
    return count


def initialize() -> None:
    """Joins JAX's distributed runtime when the environment asks for several processes; once per process.

    Must run before the first JAX computation. On CPU the processes exchange gradients through gloo.
    """
    import jax

    if requested_processes() == 1 or jax.distributed.is_initialized():
        return
    import keras

    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    # It waits for every process of the job: a process started alone would otherwise wait without a word.
    print(f"[distributed] process {os.environ.get('KERAS_DISTRIBUTION_PROCESS_ID', '?')} of {requested_processes()} "
          f"joining the job at {os.environ.get('KERAS_DISTRIBUTION_JOB_ADDRESSES', '?')}; it waits for the others",
          file=sys.stderr, flush=True)
    keras.distribution.initialize()  # reads the KERAS_DISTRIBUTION_* variables


def process_count() -> int:
    import jax

    return jax.process_count()


def process_index() -> int:
    import jax

    return jax.process_index()


def is_writer() -> bool:
    """Whether this process writes files: process 0 (every process when there is one).

    Raises:
        UserError when the environment asks for several processes but this one joined none (`initialize` runs only
        with train.distribution = "data_parallel"): every process of the job would be process 0 and write the run.
    """
    import jax

    requested = requested_processes()
    if requested > 1 and jax.process_count() == 1:
        from ich_keras.errors import UserError

        raise UserError(f"{NUM_PROCESSES_ENV}={requested} starts a job of {requested} processes, but this one trains "
                        f"alone: each would write the run directory. Set train.distribution = \"data_parallel\" to "
                        f"train as one job, or unset {NUM_PROCESSES_ENV}. Received: {NUM_PROCESSES_ENV}={requested}")
    return jax.process_index() == 0


def barrier(name: str) -> None:
    """Waits until every process gets here (no-op with one process): readers wait for process 0's files."""
    if process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


@contextlib.contextmanager
def all_or_none(what: str):
    """A block that every process finishes, or none goes past: a process whose block raised re-raises its own
    error after the others learn of it, and they raise a `UserError` naming it. No-op with one process.

    Without it, a process that fails alone (process 0 finding the run directory's lock held, another host missing
    the images) leaves the others waiting in their next collective until one of JAX's timeouts (up to minutes) fails
    them with an error that does not say why. The exchange on leaving the block is itself a collective, so the block
    must make none (no JAX computation under a distribution): a process that failed before one would send its
    exchange into the others' collective.

    Args:
        what: what the block does, for the others' message ("starting the run directory").

    Raises:
        UserError naming the process(es) that stopped, where this process's own block did not raise.
    """
    if process_count() == 1:
        yield
        return
    try:
        yield
    except BaseException:  # KeyboardInterrupt too: the others stop as well, and it still propagates
        # Its own error says more than a failed exchange (a process that died: a broken gloo connection).
        with contextlib.suppress(Exception):
            _failed_processes(failed=True)
        raise
    failed = _failed_processes(failed=False)
    if failed:
        import jax

        from ich_keras.errors import UserError

        several = len(failed) > 1
        raise UserError(f"Process{'es' if several else ''} {' and '.join(map(str, failed))} stopped while {what}: "
                        f"{'their' if several else 'its'} output says why. This process ({jax.process_index()} of "
                        f"{jax.process_count()}) stops with {'them' if several else 'it'}.")


def lost_peer(error: BaseException) -> str | None:
    """Which process stopped, when `error` is a collective failing because another process of the job died:
    "process 1" (the other one) in a job of two, "a peer process" in a larger one; None for any other error, and
    with one process."""
    count = process_count()
    if count == 1 or not _BROKEN_CONNECTION.search(str(error)):
        return None
    return f"process {1 - process_index()}" if count == 2 else "a peer process"


def end_after_lost_peer(message: str) -> NoReturn:
    """Prints `message` and ends this process with `PEER_LOST_STATUS`, without JAX's distributed shutdown.

    JAX's exit handler shuts its distributed client down at a barrier that waits for every process, the dead one
    too: until the coordination service misses its heartbeats (JAX's heartbeat timeout, 100 s), after which XLA
    aborts the process with a page of C++ log (exit status 134). The other exit handlers (a W&B run's) still run.
    """
    from jax._src import api  # private: the one exit handler to skip; a renamed one makes the test time out

    atexit.unregister(getattr(api, "clean_up", None))
    print(message, file=sys.stderr, flush=True)
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(PEER_LOST_STATUS)


def _failed_processes(failed: bool) -> list[int]:
    """The ids of the processes that passed failed=True; every process of the job must call it, once per block."""
    from jax.experimental import multihost_utils

    flags = multihost_utils.process_allgather(np.int32(failed))  # (process_count,)
    return [int(i) for i in np.flatnonzero(flags)]


SAME_FILES = "Each host reads its own files: give every host the same ones (one shared folder, or identical copies)."


def check_same(difference: str, text: str, advice: str = SAME_FILES) -> None:
    """Raises a `UserError` on every process when `text` differs between them (compared by digest); `difference`
    says what that means ("built different split lists"), `advice` what to do. No-op with one process.

    Each host reads its own files, and hosts whose data folders hold other files would build other split lists, or
    decode other pictures under the same names, then train on other images without a word (or start their replicas
    from other weights); every process of the job calls it at the same point.
    """
    if process_count() == 1:
        return
    from jax.experimental import multihost_utils

    digest = np.frombuffer(hashlib.sha256(text.encode()).digest()[:8], np.int32)  # int32: JAX's default width
    digests = np.asarray(multihost_utils.process_allgather(digest)).reshape(process_count(), -1)
    differing = [i for i in range(1, process_count()) if not np.array_equal(digests[i], digests[0])]
    if differing:
        from ich_keras.errors import UserError

        raise UserError(f"The processes {difference}: process{'es' if len(differing) > 1 else ''} "
                        f"{' and '.join(map(str, differing))} against process 0. {advice}")


@contextlib.contextmanager
def writing():
    """A block in which one process writes files without the others: Keras objects it creates stay local.

    Keras' saving builds a reference optimizer; under a distribution its variables are placed with a collective the
    other processes never join, which would hang or fail the job.
    """
    import keras

    previous = keras.distribution.distribution()
    keras.distribution.set_distribution(None)
    try:
        yield
    finally:
        keras.distribution.set_distribution(previous)


def replicated_predict(model, images: np.ndarray) -> np.ndarray:
    """Logits of `images` with every process computing the whole batch on its replica of the model.

    `model.predict_on_batch` would read the batch as this process's share of a global batch whose logits no single
    process can fetch; evaluation instead gives every process the same images and gets the same logits back.
    """
    import jax

    if model not in _predict_functions:
        def logits(trainable, non_trainable, x):
            return model.stateless_call(trainable, non_trainable, x, training=False)[0]

        _predict_functions[model] = jax.jit(logits)
    trainable = [v.value for v in model.trainable_variables]
    non_trainable = [v.value for v in model.non_trainable_variables]
    return np.asarray(_predict_functions[model](trainable, non_trainable, images))
