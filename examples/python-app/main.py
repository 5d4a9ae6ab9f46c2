"""An ordinary Python service: it knows nothing about enclaves.

Everything it needs comes from its environment, as it would on any host:
AWS_ENDPOINT_URL_KMS / AWS_REGION (boto3 reads them), the URLs it calls, its secret,
its data directory and its port. In the enclave the supervisor sets these from the
manifest, transparent egress carries its HTTPS, and the KMS proxy attests its calls.
"""
import http.server
import json
import os
import sys
import urllib.request

import boto3
import requests


def step(name, fn):
    try:
        print(f"{name}: {fn()}", flush=True)
        return True
    except Exception as e:  # report and go on: the caller checks every line
        print(f"{name}: FAILED {type(e).__name__}: {e}", flush=True)
        return False


def fetch(url):
    r = requests.get(url, timeout=20)
    return f"{r.status_code} {r.text.strip()[:60]}"


def refused(url):
    try:
        requests.get(url, timeout=20)
    except requests.RequestException as e:
        return f"refused ({type(e).__name__})"
    raise RuntimeError("a denied name was reachable")


def kms():
    client = boto3.client("kms")
    key = client.generate_data_key(KeyId=os.environ["KMS_KEY_ID"], KeySpec="AES_256")
    plain = client.decrypt(CiphertextBlob=key["CiphertextBlob"])["Plaintext"]
    assert plain == key["Plaintext"], "the data key did not round-trip"
    return f"data key {len(plain)} bytes round-tripped"


def attestation():
    req = urllib.request.Request(
        os.environ["NITRO_ATTESTATION_URL"],
        data=json.dumps({"nonce": "cHl0aG9uLWFwcA=="}).encode(),
        headers={"content-type": "application/json", "accept": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=20) as r:
        return f"document {len(json.load(r)['document'])} base64 chars"


def journal():
    path = os.path.join(os.environ.get("DATA_DIR", "/data"), "journal.txt")
    with open(path, "a") as f:
        f.write(f"boot {os.environ.get('BOOT_NAME', 'unnamed')}\n")
        f.flush()
        os.fsync(f.fileno())
    with open(path) as f:
        return " | ".join(line.strip() for line in f)


class Hello(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = b"hello from python\n"
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def main():
    ok = all([
        step("egress", lambda: fetch(os.environ["TARGET_URL"])),
        step("denied", lambda: refused(os.environ["DENIED_URL"])),
        step("kms", kms),
        step("secret", lambda: f"{len(os.environ['DB_PASSWORD'])} chars in env, "
             f"{len(open(os.environ['SECRET_FILE']).read())} in file"),
        step("attestation", attestation),
        step("journal", journal),
    ])
    requests_to_serve = int(os.environ.get("SERVE_REQUESTS", "1"))
    server = http.server.HTTPServer(("127.0.0.1", int(os.environ.get("PORT", "8080"))), Hello)
    print(f"serving {requests_to_serve} request(s)", flush=True)
    for _ in range(requests_to_serve):
        server.handle_request()
    print("done", flush=True)
    sys.exit(0 if ok else 3)


if __name__ == "__main__":
    main()
