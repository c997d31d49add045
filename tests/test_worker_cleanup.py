"""SIGTERM during training must not leave data-augmentation workers behind (nnunet_fm.hooks.worker_cleanup)."""

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

SCRIPT = textwrap.dedent(
    """
    import sys, time
    from batchgenerators.dataloading.nondet_multi_threaded_augmenter import NonDetMultiThreadedAugmenter
    from nnunet_fm.hooks.worker_cleanup import WorkerCleanupMixin

    class Batches:  # batchgenerators' loader protocol, endless
        def set_thread_id(self, thread_id):
            pass

        def __iter__(self):
            return self

        def __next__(self):
            return {"data": 0}

    class Stock:  # what nnUNetTrainer.on_train_start does with the augmenters, without nnU-Net around it
        def on_train_start(self):
            self.dataloader_train = NonDetMultiThreadedAugmenter(Batches(), None, 2)
            self.dataloader_val = NonDetMultiThreadedAugmenter(Batches(), None, 1)
            next(self.dataloader_train), next(self.dataloader_val)  # workers are up

        def print_to_log_file(self, *args):
            pass

    class Plugin(WorkerCleanupMixin, Stock):
        pass

    trainer = (Plugin if sys.argv[1] == "plugin" else Stock)()
    trainer.on_train_start()
    pids = [p.pid for a in (trainer.dataloader_train, trainer.dataloader_val) for p in a._processes]
    print(" ".join(map(str, pids)), flush=True)
    while True:
        next(trainer.dataloader_train)
        time.sleep(0.05)
    """
)


def _alive(pid: int) -> bool:
    status = Path(f"/proc/{pid}/status")
    try:
        return "State:\tZ" not in status.read_text()
    except FileNotFoundError:
        return False


def _train_and_terminate(kind: str) -> tuple[int, list[int]]:
    process = subprocess.Popen(
        [sys.executable, "-c", SCRIPT, kind], stdout=subprocess.PIPE, text=True, env={**os.environ}
    )
    pids = [int(p) for p in process.stdout.readline().split()]
    assert len(pids) == 3 and all(_alive(p) for p in pids)
    process.send_signal(signal.SIGTERM)
    code = process.wait(timeout=60)
    deadline = time.time() + 20
    while any(_alive(p) for p in pids) and time.time() < deadline:
        time.sleep(0.2)
    return code, [p for p in pids if _alive(p)]


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs /proc to see the worker processes")
def test_sigterm_stops_the_augmentation_workers_of_a_plugin_trainer():
    code, survivors = _train_and_terminate("plugin")
    assert code == 143 and survivors == []


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs /proc to see the worker processes")
def test_stock_behaviour_orphans_the_workers():
    """What the hook fixes: with SIGTERM's default action the daemon workers outlive nnU-Net's main process (stock
    nnU-Net's behaviour, not the plugin's: slow tier)."""
    code, survivors = _train_and_terminate("stock")
    try:
        assert code == -signal.SIGTERM and len(survivors) == 3
    finally:
        for pid in survivors:
            os.kill(pid, signal.SIGKILL)


def test_workspace_run_stops_the_whole_process_group_when_interrupted(tmp_path):
    """`nnunet-fm experiment` / the reports run nnU-Net commands through Workspace.run: interrupting them must
    take the command and everything it started down too."""
    from nnunet_fm.nnunet_commands import _stop_group

    child = tmp_path / "child.pid"
    command = [
        sys.executable,
        "-c",
        f"import os, subprocess, sys, time; p = subprocess.Popen([sys.executable, "
        f"'-c', 'import time; time.sleep(120)']); open({str(child)!r}, 'w').write(str(p.pid)); time.sleep(120)",
    ]
    process = subprocess.Popen(command, start_new_session=True)
    deadline = time.time() + 30
    while not child.is_file() or not child.read_text():
        assert time.time() < deadline
        time.sleep(0.1)
    grandchild = int(child.read_text())
    _stop_group(process, grace_s=5)
    assert process.poll() is not None
    deadline = time.time() + 10
    while _alive(grandchild) and time.time() < deadline:
        time.sleep(0.1)
    assert not _alive(grandchild)
