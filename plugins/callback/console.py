# Copyright: llamafleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Ansible's default output, with llamafleet's reports as plain text and long waits that say what they wait for."""
from __future__ import annotations

DOCUMENTATION = r"""
name: console
type: stdout
short_description: Ansible's default output, with multi-line reports as plain text and progress lines
version_added: "0.2.0"
description:
  - Everything as the default callback prints it, except two things operators read.
  - A debug message that is one multi-line string (the plan, the smoke answers, summaries) is printed as
    it is, line by line, unquoted and aligned; lines starting with ERROR are red and with WARN yellow
    where the terminal has colour.
  - A task retried until something finishes (the image build, downloads) prints the last line of its
    output at every retry instead of "FAILED - RETRYING".
author: llamafleet contributors (@llamafleet)
extends_documentation_fragment:
  - ansible.builtin.default_callback
  - ansible.builtin.result_format_callback
requirements:
  - set as the stdout callback (ansible.cfg of this repository does)
"""

from ansible import constants as C
from ansible.plugins.callback.default import CallbackModule as DefaultCallback


def line_colour(line: str) -> str | None:
    """The colour of a report line: errors and warnings stand out, the rest is plain."""
    text = line.lstrip()
    if text.startswith("ERROR"):
        return C.COLOR_ERROR
    if text.startswith("WARN"):
        return C.COLOR_WARN
    return None


class CallbackModule(DefaultCallback):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "stdout"
    CALLBACK_NAME = "llamafleet.fleet.console"

    def v2_runner_on_ok(self, result) -> None:
        msg = result.result.get("msg")
        if result.task.action not in C._ACTION_DEBUG or not isinstance(msg, str) or "\n" not in msg:
            super().v2_runner_on_ok(result)
            return
        if self._last_task_banner != result.task._uuid:
            self._print_task_banner(result.task)
        self._display.display(f"ok: [{self.host_label(result)}]", color=C.COLOR_OK)
        for line in msg.splitlines():
            self._display.display(line, color=line_colour(line))

    def v2_runner_retry(self, result) -> None:
        lines = str(result.result.get("stdout") or "").strip().splitlines()
        if not lines:
            super().v2_runner_retry(result)
            return
        self._display.display(f"  [{self.host_label(result)}] {result.task_name or result.task}: {lines[-1]}",
                              color=C.COLOR_DEBUG)
