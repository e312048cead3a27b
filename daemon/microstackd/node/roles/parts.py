"""What a role is made of: the configuration files it renders, the services
it runs and its one-time setup steps (``compute.py`` and ``control.py`` hold
the two roles, as data).

Commands, environments and paths may use ``${config_root}``,
``${state_path}``, ``${run_dir}``, ``${log_dir}``, ``${helpers_dir}``,
``${openstack_prefix}``, ``${python}`` (microstackd's own, for its helpers),
``${node_name}`` and ``${libvirt_uri}`` (``steps.base_values``); templates
may use those and every key of the role's ``settings``. The control role's settings are built by
``control.config.control_settings`` (``microstackd.control.plane`` runs it); a
compute's are issued by the control (``control.config.issue_compute_settings``).
"""

from __future__ import annotations

from dataclasses import dataclass

#: PATH for OpenStack services: their own bin first (privsep-helper, ...).
SERVICE_PATH = (
    "${openstack_prefix}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
)


@dataclass(frozen=True)
class ConfigFile:
    #: Template name under microstackd/node/templates/.
    template: str
    #: Where it is rendered, relative to the directory named by ``root``.
    path: str
    #: The value naming the base directory (``config_root`` or ``state_dir``).
    root: str = "config_root"
    mode: int = 0o640


@dataclass(frozen=True)
class RoleService:
    name: str
    #: The real service's command line (process manager), with ${...} placeholders.
    command: tuple[str, ...]
    #: Keys the service cannot run without, "FILE:SECTION.KEY" (FILE relative to the
    #: config root): checked by the stand-in when no OpenStack prefix is configured.
    requires: tuple[str, ...] = ()
    #: systemd unit and snap service names (defaults derive from ``name``).
    unit: str = ""
    snap_service: str = ""
    #: A line the service logs once it is up (regex); empty: alive is enough.
    ready_pattern: str = ""
    #: ``tcp://HOST:PORT``, ``unix:///PATH`` or ``http://HOST:PORT/PATH`` that
    #: must answer before the service counts as running (placeholders allowed).
    ready_check: str = ""
    ready_after: float = 2.0
    start_timeout: float = 120.0
    #: Extra environment (placeholders allowed).
    env: tuple[tuple[str, str], ...] = ()
    #: Directories created (mode 0750) before it starts.
    dirs: tuple[str, ...] = ()
    #: Runs only with an OpenStack environment (no stand-in where none is configured).
    real_only: bool = False
    #: Commands run before it is stopped and once it is gone, and once it
    #: is stopped for good (``ServiceSpec``).
    pre_stop: tuple[tuple[str, ...], ...] = ()
    post_stop: tuple[tuple[str, ...], ...] = ()
    teardown: tuple[tuple[str, ...], ...] = ()
    #: What it runs with, for a person (shown in ``status``; placeholders
    #: allowed, never a secret's).
    detail: str = ""
    #: The role's files it reads (their ``ConfigFile.path``): a re-applied role
    #: restarts it only when one of them, or its command, changed
    #: (``node/restarts.py``). None: the files its command names, by path or
    #: by a directory above them.
    reads: tuple[str, ...] | None = None


@dataclass(frozen=True)
class SetupStep:
    """A one-time setup step of a role: commands run in order, each must succeed.

    Every step must be idempotent (it is redone when it was interrupted), and
    it is recorded done once it succeeded. Commands get no secret on their
    command line: secrets go through ``env`` or ``stdin_template``."""

    name: str
    #: What the operator sees while it runs.
    title: str
    commands: tuple[tuple[str, ...], ...]
    env: tuple[tuple[str, str], ...] = ()
    #: A template rendered and fed to every command's stdin.
    stdin_template: str = ""
    #: The step is already done when this path exists (placeholders allowed).
    creates: str = ""
    #: Exit statuses that count as success (e.g. "already exists").
    ok_codes: tuple[int, ...] = (0,)
    timeout: float = 300.0
    dirs: tuple[str, ...] = ()
    #: The databases this step migrates. MariaDB's DDL is not transactional:
    #: an attempt cut short (the daemon killed, the command timed out or
    #: failed) leaves them half-migrated, and the migration redone then fails
    #: for good ("Table 'instances' already exists", "Unknown column"). Until
    #: the step is done nothing but it writes them (the order's needs), so
    #: an init that redoes an attempt that did not finish first drops them
    #: and creates them empty (``steps.run_setup``'s ``fresh_schema``).
    schema: tuple[str, ...] = ()
    #: The SQL client that does so, reading the statements on its stdin.
    schema_client: tuple[str, ...] = ()


@dataclass(frozen=True)
class Together:
    """Steps of a role's order run at once: each lane's steps one after the
    other, the lanes side by side; the step after the group starts when
    every lane is done. A step that needs another must be after it in its
    lane, or after the group. (``enrolment.machine``, rule 1.)"""

    lanes: tuple[tuple[str, ...], ...]

    def steps(self) -> tuple[str, ...]:
        return tuple(s for lane in self.lanes for s in lane)


def together(*lanes: str | tuple[str, ...]) -> Together:
    """A group of lanes; a lane of one step may be given as its name."""
    return Together(tuple((lane,) if isinstance(lane, str) else lane for lane in lanes))


@dataclass(frozen=True)
class RoleDefinition:
    name: str
    #: Keys the role's settings must hold.
    settings: tuple[str, ...]
    files: tuple[ConfigFile, ...]
    services: tuple[RoleService, ...]
    setup: tuple[SetupStep, ...] = ()
    #: With an OpenStack environment: the order of the steps after
    #: ``render-config``, each ``service NAME`` or a setup step's name, or
    #: steps run at once (``together``). Empty: the services in order.
    order: tuple[str | Together, ...] = ()
    #: Settings (never secrets) the services' commands use: kept by the node,
    #: so that it can restart them at start-up without the control.
    resume_settings: tuple[str, ...] = ()

    def step_names(self) -> tuple[str, ...]:
        """The role's steps, in order: ``render-config``, then ``order``
        (a group's steps lane after lane: an order in which they may also run
        one at a time)."""
        return (RENDER_CONFIG, *self.order_names())

    def order_names(self) -> tuple[str, ...]:
        """``order``'s steps, one after the other (a group's lane after lane)."""
        if not self.order:
            return tuple(service_step(s.name) for s in self.services)
        names: list[str] = []
        for entry in self.order:
            names += entry.steps() if isinstance(entry, Together) else (entry,)
        return tuple(names)

    def groups(self) -> tuple[tuple[tuple[str, ...], ...], ...]:
        """The lanes of each group of ``order`` (``enrolment.machine``'s ``together``)."""
        return tuple(e.lanes for e in self.order if isinstance(e, Together))

    def service(self, name: str) -> RoleService:
        return next(s for s in self.services if s.name == name)

    def setup_step(self, name: str) -> SetupStep:
        return next(b for b in self.setup if b.name == name)

    def titles(self) -> dict[str, str]:
        titles = {RENDER_CONFIG: f"rendering the {self.name} role's configuration"}
        titles.update({service_step(s.name): f"starting {s.name}" for s in self.services})
        titles.update({b.name: b.title for b in self.setup})
        return titles


RENDER_CONFIG = "render-config"
SERVICE_PREFIX = "service "


def service_step(name: str) -> str:
    return SERVICE_PREFIX + name


def env(**values: str) -> tuple[tuple[str, str], ...]:
    return tuple(values.items())


def cleanup(*args: str) -> tuple[str, ...]:
    """A stop hook of microstackd's own (``node/cleanup.py``), run with its Python."""
    return ("${python}", "-m", "microstackd.node.cleanup", *args)


#: A command's prefix that runs a shell script (then its arguments) in a
#: mount namespace of its own: what it mounts is the service's alone.
IN_PRIVATE_MOUNTS = (
    "/usr/bin/unshare",
    "--mount",
    "--propagation",
    "private",
    "--",
    "/bin/sh",
    "-ec",
)


def literal(script: str) -> str:
    """A shell script as a command argument: its ``$`` are the shell's, not placeholders."""
    return script.replace("$", "$$")
