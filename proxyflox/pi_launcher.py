"""Starting a Pi's worker pool over ssh, with the run's CurveZMQ certificates.

An encrypted ``HighThroughputExecutor`` creates its certificates in ``start()``, before its
provider submits the first block, and hands the worker pool their controller-side path as
``--cert_dir``. :class:`PiLauncher` turns that command into a block script of three lines:

1. a note on stderr naming the Pi (an ssh failure that Parsl reports then names it);
2. ``tar`` of the certificates the pool reads piped through ``ssh`` (no terminal) into
   ``python -m proxyflox.certificates receive DIR`` on the Pi: a new directory of mode 0700,
   files of mode 0600, in ``/dev/shm`` (memory, gone at reboot) where there is one, else
   ``/tmp``, under a random name. The keys never appear on a command line or in the script;
3. ``ssh -tt`` running the worker pool with ``--cert_dir DIR`` under a shell that removes ``DIR``
   once the pool has ended: by itself, because ssh was closed (run finished, block cancelled:
   the shell passes the terminal's SIGHUP on), or after losing a killed controller (its
   heartbeat threshold).

Only a Pi that loses power or whose shell is killed with SIGKILL keeps the directory (in
``/dev/shm``, until it reboots). Without encryption (``--cert_dir None``) the launcher is
``WrappedLauncher(prepend=ssh_prepend(pi))`` as before.
"""

from __future__ import annotations

import re
import secrets
import shlex

from parsl.launchers import WrappedLauncher

from proxyflox.inventory import Pi, ssh_command, ssh_note, ssh_prepend

#: The option of Parsl's worker-pool command that names the certificate directory.
CERT_DIR_OPTION = re.compile(r"--cert_dir (\S+)")
#: Prefix of the certificate directory's name on the Pi.
PI_CERT_DIR_PREFIX = "proxyflox-certs-"
#: What a worker pool reads (Parsl's client loads both of its ``*.key_secret`` files; the
#: interchange alone needs the public ``*.key`` files, to authorize clients).
PI_CERTIFICATE_FILES = ("client.key_secret", "server.key_secret")


def cert_dir_of(command: str) -> str | None:
    """The ``--cert_dir`` of a worker-pool command; ``None`` when it runs unencrypted."""
    found = CERT_DIR_OPTION.search(command)
    return None if found is None or found.group(1) == "None" else found.group(1)


def locate_pi_cert_dir(name: str) -> str:
    """Shell that sets ``d`` to the certificate directory on the Pi.

    Both ssh sessions of a block run it and get the same directory.
    """
    return f'd=/tmp; [ -d /dev/shm ] && [ -w /dev/shm ] && d=/dev/shm; d="$d/{name}"'


def archive_command(cert_dir: str) -> str:
    """Shell that writes the certificates a Pi needs to stdout, as a tar stream.

    512-byte records instead of tar's 10 KiB: the stream crosses each Pi's link once per block.
    """
    return shlex.join(["tar", "-b", "1", "-C", cert_dir, "-cf", "-", *PI_CERTIFICATE_FILES])


def receive_command(pi: Pi, name: str) -> str:
    """What the Pi runs to unpack the certificates from its stdin."""
    python = shlex.quote(pi.python)
    return f'{locate_pi_cert_dir(name)}; exec {python} -m proxyflox.certificates receive "$d"'


def pool_command(command: str, name: str) -> str:
    """What the Pi runs for the worker pool: ``command`` reading the certificates from ``d``.

    The shell removes ``d`` when it exits, and it exits once the pool has. The pool runs in the
    background so that the shell, the session leader that gets the terminal's SIGHUP when ssh
    closes, hears it at once and passes it on (a shell waiting for a foreground command would
    run its trap only after the command, which then never hears of the hangup). Before the pool
    starts, a signal ends the shell; ``exit`` in a trap runs the EXIT trap.
    """
    pool = CERT_DIR_OPTION.sub(lambda _: '--cert_dir "$d"', command, count=1)
    return "; ".join(
        [
            locate_pi_cert_dir(name),
            "trap 'rm -rf \"$d\"' EXIT",
            "trap 'exit 129' HUP; trap 'exit 143' TERM; trap 'exit 130' INT",
            f"{pool} & p=$!",
            "trap 'kill -HUP $p' HUP; trap 'kill -TERM $p' TERM INT",
            # A trapped signal interrupts wait; wait again until the pool is gone.
            "s=0; while kill -0 $p 2>/dev/null; do wait $p; s=$?; done; exit $s",
        ]
    )


def on_the_pi(pi: Pi, script: str, terminal: bool) -> str:
    """``ssh ... PI sh -c SCRIPT`` as a shell line: ``sh`` whatever the Pi user's login shell."""
    return shlex.join([*ssh_command(pi, terminal=terminal), f"sh -c {shlex.quote(script)}"])


class PiLauncher(WrappedLauncher):
    """The worker pool of ``pi``, started over ssh; with encryption, its certificates too."""

    def __init__(self, pi: Pi, debug: bool = True) -> None:
        super().__init__(prepend=ssh_prepend(pi), debug=debug)
        self.pi = pi

    def __call__(
        self, command: str, tasks_per_node: int, nodes_per_block: int, script_dir: str = ""
    ) -> str:
        """The block's script: the command run on the Pi, with its certificates if it has any."""
        cert_dir = cert_dir_of(command)
        if cert_dir is None:
            return super().__call__(command, tasks_per_node, nodes_per_block, script_dir)
        name = PI_CERT_DIR_PREFIX + secrets.token_hex(8)  # per block: blocks never share one
        receive = on_the_pi(self.pi, receive_command(self.pi, name), terminal=False)
        return "\n".join(
            [
                ssh_note(self.pi),
                f"{archive_command(cert_dir)} | {receive} || exit 1",
                on_the_pi(self.pi, pool_command(command, name), terminal=True),
            ]
        )
