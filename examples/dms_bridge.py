#!/usr/bin/env python3
"""A document-management system plugged into a truc edge over REST.

Copy this file to start an integration. It needs only Python 3.8+ (standard
library). Two commands:

  send    sign and send a document with attachments, print its doc_id
  listen  follow the edge's event stream; for each document that arrives,
          save it and its attachments, acknowledge it (the sender gets a signed
          ACKED receipt) and answer with business statuses 01 (arrived) and
          03 (registered); print statuses and receipts about our own documents.

The event stream resumes where it stopped: the last event id is kept in
--state, so a restart neither misses nor repeats an event.

  TRUC_URL=http://127.0.0.1:8712 TRUC_TOKEN=$(cat certs-dev/tokens/nghean.token) \\
      python3 examples/dms_bridge.py listen --organ 000.00.00.H41 --out inbox/

  TRUC_URL=http://127.0.0.1:8711 TRUC_TOKEN=$(cat certs-dev/tokens/vpcp.token) \\
      python3 examples/dms_bridge.py send --from 000.00.00.G22 --to 000.00.00.H41 \\
      --subject "Về việc ..." --code 7816/VPCP-TTĐT report.pdf

Every error the edge returns is JSON: {"code": "...", "message": "..."}.
"""

import argparse
import base64
import hashlib
import json
import mimetypes
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid

# Files up to this size travel inline in the JSON; larger ones are uploaded
# first (resumable) and referenced by their SHA-256.
INLINE_MAX = 1 << 20
UPLOAD_PIECE = int(os.environ.get("DMS_UPLOAD_PIECE", 8 << 20))


class TrucError(Exception):
    def __init__(self, status, code, message):
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code = status, code


class Edge:
    def __init__(self, url, token):
        self.url = url.rstrip("/")
        self.token = token

    def _request(self, method, path, body=None, content_type=None, headers=None):
        req = urllib.request.Request(self.url + path, data=body, method=method)
        req.add_header("Authorization", "Bearer " + self.token)
        if content_type:
            req.add_header("Content-Type", content_type)
        for k, v in (headers or {}).items():
            req.add_header(k, v)
        try:
            return urllib.request.urlopen(req, timeout=60)
        except urllib.error.HTTPError as e:
            try:
                err = json.load(e)
            except ValueError:
                err = {"code": "HTTP", "message": e.reason}
            raise TrucError(e.code, err.get("code"), err.get("message")) from None

    def call(self, method, path, payload=None):
        body = None if payload is None else json.dumps(payload).encode()
        with self._request(method, path, body, "application/json") as r:
            return json.load(r)

    def upload(self, path):
        """Uploads a file in pieces. The edge keeps what it received: after a
        piece (409 FAILED_PRECONDITION: "incomplete") or a cut connection, ask
        it where to resume."""
        size = os.path.getsize(path)
        upload_id = str(uuid.uuid4())
        offset, stalled = 0, 0
        with open(path, "rb") as f:
            while True:
                f.seek(offset)
                piece = f.read(UPLOAD_PIECE)
                q = urllib.parse.urlencode({"size": size, "offset": offset})
                try:
                    with self._request("PUT", f"/v1/uploads/{upload_id}?{q}", piece,
                                       "application/octet-stream") as r:
                        return json.load(r)
                except TrucError as e:
                    if e.code not in ("FAILED_PRECONDITION", "UNAVAILABLE"):
                        raise
                except OSError as e:
                    print(f"upload: {e}; resuming", file=sys.stderr)
                    time.sleep(1)
                status = self.call("GET", f"/v1/uploads/{upload_id}")
                if status.get("sha256"):
                    return {"sha256": status["sha256"], "size": size}
                stalled = stalled + 1 if status["offset"] <= offset else 0
                if stalled > 3:
                    raise TrucError(0, "STALLED", f"upload of {path} makes no progress")
                offset = status["offset"]

    def download(self, href, dest):
        """Streams an attachment to a file, checking its SHA-256."""
        h = hashlib.sha256()
        tmp = dest + ".part"
        with self._request("GET", href) as r, open(tmp, "wb") as f:
            while True:
                chunk = r.read(1 << 16)
                if not chunk:
                    break
                h.update(chunk)
                f.write(chunk)
        os.replace(tmp, dest)
        return h.hexdigest()

    def events(self, organ, last_id):
        """Yields (id, kind, data) forever, reconnecting after a drop."""
        backoff = 0.5
        while True:
            headers = {"Accept": "text/event-stream"}
            if last_id:
                headers["Last-Event-ID"] = str(last_id)
            try:
                q = urllib.parse.urlencode({"organ": organ})
                req = urllib.request.Request(f"{self.url}/v1/events?{q}", headers=headers)
                req.add_header("Authorization", "Bearer " + self.token)
                with urllib.request.urlopen(req, timeout=60) as r:
                    backoff = 0.5
                    ev_id, kind, data = None, None, []
                    for raw in r:
                        line = raw.decode("utf-8").rstrip("\r\n")
                        if line.startswith(":"):
                            continue  # keep-alive
                        if not line:
                            if ev_id is not None:
                                last_id = ev_id
                                yield ev_id, kind, json.loads("\n".join(data))
                            elif kind == "error":
                                # The edge ends the stream and says why.
                                print(f"event stream: {''.join(data)}", file=sys.stderr)
                            ev_id, kind, data = None, None, []
                        elif line.startswith("id:"):
                            ev_id = int(line[3:].strip())
                        elif line.startswith("event:"):
                            kind = line[6:].strip()
                        elif line.startswith("data:"):
                            data.append(line[5:].lstrip())
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as e:
                print(f"event stream: {e}; reconnecting", file=sys.stderr)
            # Ended or dropped: resume after the last event, not at once.
            time.sleep(backoff)
            backoff = min(backoff * 2, 30)


def attachment(edge, path):
    name = os.path.basename(path)
    ctype = mimetypes.guess_type(name)[0] or "application/octet-stream"
    if os.path.getsize(path) <= INLINE_MAX:
        with open(path, "rb") as f:
            data = base64.b64encode(f.read()).decode()
        return {"name": name, "content_type": ctype, "data_base64": data}
    up = edge.upload(path)
    return {"name": name, "content_type": ctype, "sha256": up["sha256"], "size": up["size"]}


def cmd_send(edge, a):
    number, _, notation = (a.code or "").partition("/")
    doc = {
        "from": a.sender,
        "to": a.to.split(","),
        "subject": a.subject,
        "code_number": number,
        "code_notation": notation,
        "priority": a.priority,
        "attachments": [attachment(edge, p) for p in a.files],
    }
    if a.doc_id:
        doc["doc_id"] = a.doc_id  # the same document again is a no-op: safe to retry
    r = edge.call("POST", "/v1/documents", doc)
    print(r["doc_id"])


def safe_name(name):
    base = os.path.basename(name.replace("\\", "/")).strip() or "attachment"
    return "".join(c if c.isprintable() else "_" for c in base)


def handle_document(edge, organ, doc_id, sender, out):
    # `from` names the sender: another agency may have used the same doc_id.
    q = "?" + urllib.parse.urlencode({"from": sender})
    doc = edge.call("GET", f"/v1/inbox/{doc_id}{q}")
    folder = os.path.join(out, doc_id)
    os.makedirs(folder, exist_ok=True)
    for a in doc["attachments"]:
        got = edge.download(a["href"], os.path.join(folder, f'{a["index"]}-{safe_name(a["name"])}'))
        if got != a["sha256"]:
            edge.call("POST", f"/v1/inbox/{doc_id}/nack{q}", {"organ": organ, "reason": "attachment digest mismatch"})
            return
    with open(os.path.join(folder, "document.json"), "w", encoding="utf-8") as f:
        json.dump(doc, f, ensure_ascii=False, indent=2)
    # Saved: acknowledge (a signed receipt for the sender), then answer.
    edge.call("POST", f"/v1/inbox/{doc_id}/ack{q}", {"organ": organ})
    change = doc.get("business_type", "new")
    if change != "new":
        # Not a new document: a revoke, update or replace of one received
        # before (its subject is that one's). Whether to accept it (15) or
        # refuse it (16) is a person's decision in the document software.
        print(f"{change} of {doc['target_doc_id']} from {doc['from']} ({doc_id}): "
              f"answer 15 (accept) or 16 (refuse) once decided", flush=True)
        return
    for code, note in (("01", "Đã đến"), ("03", "Đã vào sổ")):
        edge.call("POST", f"/v1/inbox/{doc_id}/status{q}", {"code": code, "note": note, "organ": organ})
    print(f"received {doc_id} from {doc['from']}: {doc['subject']}", flush=True)


def cmd_listen(edge, a):
    os.makedirs(a.out, exist_ok=True)
    last = 0
    if os.path.exists(a.state):
        with open(a.state) as f:
            last = int(f.read().strip() or 0)
    handled = 0
    for ev_id, kind, ev in edge.events(a.organ, last):
        if kind == "arrived" and ev["detail"] == "document":
            handle_document(edge, a.organ, ev["doc_id"], ev["from"], a.out)
            handled += 1
        elif kind == "arrived":
            # A status about one of our documents: read, then acknowledge.
            print(f"{ev['detail']} from {ev['from']} ({ev['subject']})", flush=True)
            q = urllib.parse.urlencode({"from": ev["from"]})
            edge.call("POST", f"/v1/inbox/{ev['doc_id']}/ack?{q}", {"organ": a.organ})
        elif kind in ("state", "status"):
            print(f"{ev['doc_id']} at {ev['recipient']}: {kind} {ev['detail']}", flush=True)
        # Only now is the event done: keep its id so a restart resumes after it.
        tmp = a.state + ".tmp"
        with open(tmp, "w") as f:
            f.write(str(ev_id))
        os.replace(tmp, a.state)
        if a.count and handled >= a.count:
            return


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--url", default=os.environ.get("TRUC_URL", "http://127.0.0.1:8711"))
    p.add_argument("--token", default=os.environ.get("TRUC_TOKEN"))
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("send")
    s.add_argument("--from", dest="sender", required=True)
    s.add_argument("--to", required=True, help="comma-separated OrganIds")
    s.add_argument("--subject", required=True)
    s.add_argument("--code", help="number/notation, e.g. 7816/VPCP-TTĐT")
    s.add_argument("--priority", type=int, default=0)
    s.add_argument("--doc-id")
    s.add_argument("files", nargs="*")
    l = sub.add_parser("listen")
    l.add_argument("--organ", required=True)
    l.add_argument("--out", default="inbox")
    l.add_argument("--state", default=".truc-last-event")
    l.add_argument("--count", type=int, default=0, help="stop after this many documents")
    a = p.parse_args()
    if not a.token:
        p.error("give --token or TRUC_TOKEN")
    edge = Edge(a.url, a.token)
    try:
        {"send": cmd_send, "listen": cmd_listen}[a.cmd](edge, a)
    except TrucError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
