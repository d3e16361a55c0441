"""Run documented shell lines the way a reader pastes them: a ``curl`` line becomes an aiohttp request that
must answer the status its comment promises (``# 200: ...``); a line ending in ``&`` starts a process the
caller stops by PID; any other line (or heredoc) runs in bash, with the variables and functions the lines
before it left behind, and the variables it sets are kept.
"""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

COMMAND_TIMEOUT_S = 30.0
COMMENT = re.compile(r"^(?P<code>.*?)\s{2,}#\s(?P<comment>.*)$")
STATUS = re.compile(r"^(\d{3})\b")
CAPTURE = re.compile(r"^(?P<name>[A-Za-z_]\w*)=\$\((?P<command>curl .*)\)$")
ASSIGNED = re.compile(r"(?:^|;\s*|export\s+)([A-Za-z_]\w*)=")
FUNCTION = re.compile(r"^[A-Za-z_]\w*\(\) \{")
VARIABLE = re.compile(r"\$([A-Za-z_]\w*)")
HEREDOC = re.compile(r"<<\s*'?(\w+)'?")
# curl --retry: what counts as transient (curl's man page), and its first wait, doubled for each next one.
TRANSIENT = frozenset({408, 429, 500, 502, 503, 504})
FIRST_RETRY_WAIT_S = 1.0


@dataclass
class Shell:
    """What the lines run so far left behind: variables (and every value they ever held) and functions."""

    cwd: Path
    variables: dict[str, str] = field(default_factory=dict)
    functions: list[str] = field(default_factory=list)
    values: list[str] = field(default_factory=list)
    background: list[subprocess.Popen[bytes]] = field(default_factory=list)   # the caller stops them

    def set(self, name: str, value: str) -> None:
        self.variables[name] = value
        self.values.append(value)

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, **self.variables}


def split_comment(line: str) -> tuple[str, int | None]:
    """A line's code and the status its comment promises (None: the comment names no status)."""
    found = COMMENT.match(line)
    if found is None:
        return line, None
    status = STATUS.match(found["comment"])
    return found["code"], int(status[1]) if status else None


@dataclass
class CurlRequest:
    method: str
    url: str
    headers: dict[str, str]
    data: str | None
    retries: int = 0
    retry_refused: bool = False


def commands(block: str) -> list[str]:
    """A shell block's commands: one a line, a heredoc with its lines as one."""
    out: list[str] = []
    lines = iter(block.splitlines())
    for line in lines:
        if not line.strip():
            continue
        if heredoc := HEREDOC.search(line):
            body = []
            for more in lines:
                body.append(more)
                if more == heredoc[1]:
                    break
            line = "\n".join([line, *body])
        out.append(line)
    return out


def parse_curl(command: str, variables: dict[str, str]) -> CurlRequest:
    """The request of a curl command line, its $VARIABLEs expanded as bash would."""
    args = [VARIABLE.sub(lambda m: variables[m[1]], arg) for arg in shlex.split(command)]
    assert args[0] == "curl"
    request = CurlRequest("", "", {}, None)
    rest = iter(args[1:])
    for arg in rest:
        if arg in ("-s", "-i", "-si"):
            continue
        if arg == "-X":
            request.method = next(rest)
        elif arg == "-H":
            name, _, value = next(rest).partition(":")
            request.headers[name.strip()] = value.strip()
        elif arg == "-d":
            request.data = next(rest)
            request.headers.setdefault("Content-Type", "application/x-www-form-urlencoded")   # as curl sends it
        elif arg == "--retry":
            request.retries = int(next(rest))
        elif arg == "--retry-connrefused":
            request.retry_refused = True
        else:
            assert not arg.startswith("-"), f"shell_lines does not know curl's {arg}"
            request.url = arg
    assert request.url, command
    request.method = request.method or ("POST" if request.data is not None else "GET")
    return request


async def run_curl(http: aiohttp.ClientSession, command: str, shell: Shell) -> tuple[int, str]:
    """Send the request, retrying as curl's --retry does (at most that many times, waits doubling)."""
    request = parse_curl(command, shell.variables)
    wait_s = FIRST_RETRY_WAIT_S
    for attempt in range(request.retries + 1):
        last = attempt == request.retries
        try:
            async with http.request(request.method, request.url, headers=request.headers, data=request.data) as resp:
                if resp.status not in TRANSIENT or last:
                    return resp.status, await resp.text()
        except aiohttp.ClientConnectorError:
            if not request.retry_refused or last:
                raise
        await asyncio.sleep(wait_s)
        wait_s *= 2
    raise AssertionError("unreachable")


async def run_in_bash(code: str, shell: Shell) -> None:
    """Run ``code`` (one line, or a heredoc) in bash and keep the variables it sets."""
    names = ASSIGNED.findall(code.splitlines()[0])
    script = "\n".join([*shell.functions, code, 'printf "%s\\0" ' + " ".join(f'"${n}"' for n in names)])
    proc = await asyncio.create_subprocess_exec("bash", "-c", script, cwd=shell.cwd, env=shell.env,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), COMMAND_TIMEOUT_S)
    assert proc.returncode == 0, f"{code}\n{err.decode()}"
    for name, value in zip(names, out.decode().split("\0"), strict=False):
        assert value, f"{code} left {name} empty"
        shell.set(name, value)


async def run_line(http: aiohttp.ClientSession, line: str, shell: Shell) -> None:
    """Run one documented line: a curl request (its status checked), a function definition, or bash."""
    code, status = split_comment(line)
    if FUNCTION.match(code):
        shell.functions.append(code)
        return
    if code.rstrip().endswith("&"):
        start_in_background(code.rstrip().removesuffix("&"), shell)
        return
    if "curl " not in code:
        await run_in_bash(code, shell)
        return
    captured = CAPTURE.match(code)
    assert status is not None, f"a curl line without the status to expect: {line}"
    got, body = await run_curl(http, captured["command"] if captured else code, shell)
    assert got == status, f"{line}\n-> {got} {body}"
    if captured:
        shell.set(captured["name"], body)


def start_in_background(code: str, shell: Shell) -> None:
    """``code &``, but with a PID to stop (bash execs the command); its output goes to a log in cwd."""
    log_path = shell.cwd / f"background-{len(shell.background)}.log"
    with open(log_path, "wb") as log:
        shell.background.append(subprocess.Popen(["bash", "-c", f"exec {code}"], cwd=shell.cwd, env=shell.env,
                                                 stdout=log, stderr=subprocess.STDOUT))


def curl_session() -> aiohttp.ClientSession:
    """A client that behaves like curl without -b/-c: it keeps no cookies."""
    return aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar(),
                                 timeout=aiohttp.ClientTimeout(total=COMMAND_TIMEOUT_S))
