"""Orthanc plugin (orthanc-python): an "AI triage" button on each instance in Orthanc Explorer.

Load it with Orthanc's Python plugin (Debian package ``orthanc-python``)::

    "Plugins": ["/usr/share/orthanc/plugins/libOrthancPython.so", ...],
    "PythonScript": "/path/to/checkout/cxrtriage/pacs/orthanc_plugin.py",
    "CxrTriage": {"Python": "/path/to/checkout/.venv/bin/python", "Model": null, "Timeout": 120}

Routes (behind Orthanc's own authentication):

* ``POST /cxr-triage/instances/{orthanc-id}/triage``: triage the instance, store the
  Secondary Capture and the TID 1500 SR into its study, answer JSON (prediction, reason,
  Orthanc IDs of the stored objects);
* ``GET /cxr-triage/status``: the interpreter and model the plugin will use.

The model runs in the project's interpreter (``CxrTriage.Python``, else the environment
variable ``CXR_TRIAGE_PYTHON``, else ``.venv/bin/python`` of the checkout holding this
file) in one long-lived ``python -m cxrtriage.pacs.worker --serve`` process, started on
the first click (or when Orthanc starts, with ``"Preload": true``) and restarted if it
dies; Orthanc's embedded Python needs only the standard library, whatever its version.
"""

import base64
import json
import os
import select
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import orthanc  # provided by Orthanc's Python plugin

_HERE = Path(__file__).resolve().parent
_ROOT = _HERE.parents[1]
# Orthanc puts the script's folder first on sys.path; our module names must not shadow others.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]


def _settings() -> dict:
    try:
        cfg = json.loads(orthanc.GetConfiguration()).get("CxrTriage", {}) or {}
    except Exception:  # noqa: BLE001 - plugin must load; unreadable configuration means defaults
        cfg = {}
    python = cfg.get("Python") or os.environ.get("CXR_TRIAGE_PYTHON") or str(_ROOT / ".venv" / "bin" / "python")
    return {"python": python, "model": cfg.get("Model"), "timeout": float(cfg.get("Timeout", 120)),
            "preload": bool(cfg.get("Preload", False)), "project": str(_ROOT)}


SETTINGS = _settings()


def _answer(output, status: int, body: dict) -> None:
    text = json.dumps(body)
    if status == 200:
        output.AnswerBuffer(text, "application/json")
    else:
        try:
            output.SendHttpStatus(status, text)
        except TypeError:  # older wrappers: code only
            output.SendHttpStatusCode(status)


class _Worker:
    """The triage worker process, spoken to with length-prefixed frames over its stdin/stdout."""

    def __init__(self) -> None:
        self.proc = None
        self.lock = threading.Lock()

    def _start(self) -> None:
        cmd = [SETTINGS["python"], "-m", "cxrtriage.pacs.worker", "--serve"]
        if SETTINGS["model"]:
            cmd += ["--model", str(SETTINGS["model"])]
        env = dict(os.environ)
        env["PYTHONPATH"] = SETTINGS["project"] + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        env.setdefault("CXR_THREADS", "1")
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env,
                                     cwd=SETTINGS["project"], bufsize=0)

    def _stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def _read(self, n: int, deadline: float) -> bytes:
        fd, buf = self.proc.stdout.fileno(), b""
        while len(buf) < n:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no answer from the triage worker within {SETTINGS['timeout']:.0f} s")
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                chunk = os.read(fd, n - len(buf))
                if not chunk:
                    raise EOFError(f"the triage worker exited (code {self.proc.poll()}); see Orthanc's log")
                buf += chunk
        return buf

    def call(self, dicom: bytes) -> dict:
        with self.lock:
            if self.proc is None or self.proc.poll() is not None:
                self._start()
            deadline = time.monotonic() + SETTINGS["timeout"]
            try:
                self.proc.stdin.write(struct.pack(">Q", len(dicom)) + dicom)
                (n,) = struct.unpack(">Q", self._read(8, deadline))
                return json.loads(self._read(n, deadline).decode("utf-8"))
            except Exception:
                self._stop()
                raise

    def warm_up(self) -> None:
        with self.lock:
            if self.proc is None:
                self._start()


WORKER = _Worker()


def triage_instance(output, uri, **request) -> None:
    """POST /cxr-triage/instances/{id}/triage"""
    if request.get("method") != "POST":
        output.SendMethodNotAllowed("POST")
        return
    instance_id = request["groups"][0]
    try:
        dicom = orthanc.GetDicomForInstance(instance_id)
    except Exception:  # noqa: BLE001 - plugin callback: any lookup failure answers 404
        _answer(output, 404, {"error": f"unknown instance {instance_id}"})
        return
    try:
        result = WORKER.call(dicom)
    except Exception as exc:  # noqa: BLE001 - plugin callback: any worker failure answers 500
        orthanc.LogError(f"cxr-triage: triage worker ({SETTINGS['python']}) failed: {exc}")
        _answer(output, 500, {"error": f"triage worker failed ({type(exc).__name__}: {exc}); "
                                       "check CxrTriage.Python in Orthanc's configuration"})
        return
    stored = []
    for item in result.pop("outputs", []) or []:
        answer = json.loads(orthanc.RestApiPost("/instances", base64.b64decode(item["data"])))
        stored.append({"ID": answer.get("ID"), "Status": answer.get("Status"),
                       "SOPInstanceUID": item.get("sop_instance_uid"), "SOPClassUID": item.get("sop_class_uid")})
    result["stored"] = stored
    orthanc.LogWarning(f"cxr-triage: instance {instance_id}: {result.get('status')} "
                       f"({result.get('reason') or 'scored'}), {len(stored)} object(s) stored")
    _answer(output, 200 if result.get("status") != "error" else 500, result)


def status(output, uri, **request) -> None:
    """GET /cxr-triage/status"""
    body = dict(SETTINGS, python_exists=Path(SETTINGS["python"]).exists())
    output.AnswerBuffer(json.dumps(body), "application/json")


orthanc.RegisterRestCallback("/cxr-triage/instances/(.*)/triage", triage_instance)
if SETTINGS["preload"]:
    threading.Thread(target=WORKER.warm_up, daemon=True).start()
orthanc.RegisterRestCallback("/cxr-triage/status", status)

# Orthanc Explorer 1 (jQuery Mobile): a button under the instance's details.
orthanc.ExtendOrthancExplorer("""
$('#instance').live('pagebeforeshow', function() {
  $('#cxr-triage-button').remove();
  var b = $('<a>')
    .attr('id', 'cxr-triage-button')
    .attr('data-role', 'button')
    .attr('href', '#')
    .attr('data-icon', 'search')
    .attr('data-theme', 'e')
    .text('AI triage')
    .button()
    .click(function(e) {
      e.preventDefault();
      var uuid = $.mobile.pageData.uuid;
      $.mobile.showPageLoadingMsg && $.mobile.showPageLoadingMsg();
      $.ajax({
        url: '../cxr-triage/instances/' + uuid + '/triage',
        type: 'POST',
        dataType: 'json',
        success: function(r) {
          $.mobile.hidePageLoadingMsg && $.mobile.hidePageLoadingMsg();
          var p = r.prediction || {};
          var msg = (r.status === 'skipped') ? ('Not triaged: ' + r.reason)
            : (p.priority === 'refused' || p.error) ? ('Refused: ' + r.reason)
            : ('P(abnormal) ' + p.score.toFixed(3) + ' (' + p.label + ', ' + p.priority + ')');
          alert('AI TRIAGE - NOT FOR DIAGNOSIS\\n' + msg + '\\n' + (r.stored || []).length +
                ' result object(s) stored in the study.');
        },
        error: function(x) {
          $.mobile.hidePageLoadingMsg && $.mobile.hidePageLoadingMsg();
          alert('AI triage failed: ' + x.status + ' ' + x.responseText);
        }
      });
    });
  b.insertAfter($('#instance-info'));
});
""")
