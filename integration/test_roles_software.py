"""Workload roles (issue 22) proven on the software they are named for, from Debian's packages.

One image (software_env.py: debootstrap of nginx, php-fpm, postgresql, nodejs,
imagemagick, python3, cached outside the repo) labelled per role. Each test
runs the real software under its role and tries the role's forbidden behaviour
with that software or from inside its container, and runs the same image,
label and flags without tiergate (an empty hooks dir) as the control, where
the forbidden behaviour works. Peers live in a netns the tests create
(roles_env.Peers): busybox httpd on 80 and 8080, and a Python server for HTTPS
on 443 (self-signed) and DNS on 53/udp.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from harness import run_cmd
from roles_env import BODY, BUSYBOX, IMAGE_PREFIX, IP, TIERGATE, wait_for
from software_env import WEB_UNPRIVILEGED, software_env_fixture

pytestmark = pytest.mark.podman

REPO = Path(__file__).resolve().parent.parent
env = software_env_fixture(peer_ports=(80, 8080))

# HTTPS on 443 (GET: BODY, POST: "paid N") and DNS on 53/udp (every A query -> the API address)
PEER_SERVER = r"""
import http.server, socket, ssl, sys, threading
cert, key, answer = sys.argv[1:4]

class H(http.server.BaseHTTPRequestHandler):
    def reply(self, body):
        self.send_response(200); self.send_header("Content-Length", str(len(body))); self.end_headers()
        self.wfile.write(body)
    def do_GET(self): self.reply(b"%s\n")
    def do_POST(self): self.reply(b"paid %%d\n" %% len(self.rfile.read(int(self.headers["Content-Length"]))))
    def log_message(self, *a): pass

def dns():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("0.0.0.0", 53))
    while True:
        q, peer = s.recvfrom(512)
        end = q.index(b"\0", 12) + 5
        a = b"\xc0\x0c\0\x01\0\x01\0\0\0\x3c\0\x04" + socket.inet_aton(answer)
        s.sendto(q[:2] + b"\x81\x80" + q[4:6] + b"\0\x01\0\0\0\0" + q[12:end] + a, peer)

threading.Thread(target=dns, daemon=True).start()
srv = http.server.ThreadingHTTPServer(("0.0.0.0", 443), H)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER); ctx.load_cert_chain(cert, key)
srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
srv.serve_forever()
""" % BODY


@pytest.fixture(scope="module")
def tls_peer(env):
    """The HTTPS + DNS peer in the test netns; returns the CA file's path inside containers."""
    p = env.peers
    d = env.dir / "tls"
    d.mkdir()
    run_cmd(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=tiergate-psp",
             "-addext", f"subjectAltName=IP:{p.psp},IP:{p.api},IP:{p.other}",
             "-keyout", d / "key.pem", "-out", d / "cert.pem"], check=True, timeout=60)
    (d / "server.py").write_text(PEER_SERVER)
    p.spawn("/usr/bin/python3", "-I", str(d / "server.py"), str(d / "cert.pem"), str(d / "key.pem"), p.api)
    ca = env.file("ca.pem", (d / "cert.pem").read_text())

    def up():
        out = run_cmd([IP, "netns", "exec", p.ns, BUSYBOX, "netstat", "-ltnu"], timeout=20).stdout
        return ":443 " in out and re.search(r"udp .*:53 ", out)
    wait_for(up, 10, "the HTTPS/DNS peer to listen")
    return ca


def versions_line(env, *pkgs: str) -> str:
    return ", ".join(f"{p} {env.versions[p]}" for p in pkgs)


# --------------------------------------------------------------------------- web: nginx + PHP-FPM

SITE = """server {
    listen 80 default_server;
    listen [::]:80 default_server;
    root /srv/tg/www;
    index index.html;
    location ~ \\.php$ {
        include snippets/fastcgi-php.conf;
        fastcgi_pass unix:/run/php/php8.2-fpm.sock;
    }
    location /api/ { proxy_pass https://%(api)s:443/; proxy_connect_timeout 3s; }
    location /other/ { proxy_pass https://%(other)s:443/; proxy_connect_timeout 3s; }
}
"""


@pytest.mark.parametrize("tier", ["web", "restricted"])
def test_stock_nginx_fails_and_explain_names_the_cause(env, tier):
    """Debian's nginx as shipped starts as root and chowns its temp dirs: web and restricted (no
    CAP_CHOWN) stop it, and `tiergate explain CONTAINER` names that cause in one step."""
    name = f"tg-sw-nginx-{tier}-{os.getpid()}"
    proc = run_cmd(env.argv(True, "run", "--name", name, *env.net_args(), IMAGE_PREFIX + tier,
                            "nginx", "-g", "daemon off;"), env=env.podman.env, timeout=90)
    print(f"\nstock nginx under {tier}:", proc.returncode, proc.stderr.strip()[-300:])
    assert proc.returncode == 1
    assert 'chown("/var/lib/nginx/body", 33) failed (1: Operation not permitted)' in proc.stderr
    why = run_cmd([*TIERGATE, "--policy", env.tg / "policy.toml", "explain", name, "--log", env.log],
                  env=env.podman.env, timeout=60)
    print(why.stdout, why.stderr)
    assert why.returncode == 0, why.stderr
    assert f"tier: {tier} " in why.stdout and "exit status 1 (exited)" in why.stdout
    assert re.search(rf"most likely.*\n  CAP_CHOWN, which tier {tier} removes: .*chown\(\"/var/lib/nginx/body\"",
                     why.stdout), why.stdout
    env.podman.podman("rm", "-f", name)
    ip = env.peers.next_ip()
    name = env.serve(tier, "nginx && echo READY && exec sleep 300", args=env.net_args(ip), hooked=False)
    page = env.peers.get_from_peers(f"http://{ip}/")
    print("control (no tiergate):", (page or "")[:60])
    assert page and "Welcome to nginx" in page
    env.podman.podman("rm", "-f", "--time", "0", name)


def test_web_nginx_php_fpm(env, tls_peer):
    """nginx + PHP-FPM as www-data (the documented image change) serve under web; egress stays allowlisted."""
    p = env.peers
    env.file("www/index.html", "nginx-ok\n")
    env.file("www/info.php", '<?php echo "php-ok ", PHP_VERSION, " ", php_sapi_name(), "\\n";')
    env.file("site.conf", SITE % {"api": p.api, "other": p.other})
    script = "php-fpm8.2 -D && nginx && echo READY && exec sleep 300"
    mount = ["-v", f"{env.files}/site.conf:/etc/nginx/sites-enabled/default:ro",
             "--sysctl", "net.ipv4.ip_unprivileged_port_start=80"]
    results = {}
    for hooked in (True, False):
        ip = p.next_ip()
        name = env.serve("web-unprivileged", script, args=[*env.net_args(ip), *mount], hooked=hooked)
        got = {path: p.get_from_peers(f"http://{ip}/{path}", secs=6) for path in ("", "info.php", "api/", "other/")}
        ps = env.exec(name, "ps", "-eo", "user,comm").stdout
        results[hooked] = got
        print(f"\n{'web' if hooked else 'control (no tiergate)'}:", got, ps.split())
        assert "root" not in ps.split()[2:], ps
        env.podman.podman("rm", "-f", "--time", "0", name)
    got, ctl = results[True], results[False]
    print("proven with", versions_line(env, "nginx", "php8.2-fpm"))
    assert env.tier_granted("web-unprivileged") == {"web"}
    assert got[""] == "nginx-ok\n" and got["info.php"].startswith("php-ok 8.2") and "fpm-fcgi" in got["info.php"]
    assert got["api/"] == BODY + "\n"  # the API in [networks.web]
    assert got["other/"] is None  # another host: nginx answers 502/504
    assert ctl == got | {"other/": BODY + "\n"}
    # the change docs/roles.md gives is the one tested here
    assert WEB_UNPRIVILEGED in (REPO / "docs" / "roles.md").read_text()


# PHP calling finit_module(2) itself, through its built-in FFI (enabled for the CLI): prints the errno
INIT_MODULE = ('$f = FFI::cdef("long syscall(long n, long fd, const char *args, long flags); '
               'int *__errno_location(void);"); $r = $f->syscall(313, -1, "", 0); '
               'echo "finit_module ", $r, " errno ", $f->__errno_location()[0], "\\n";')


def test_web_php_cannot_load_kernel_modules(env):
    """PHP in the web container calls finit_module: EPERM (seccomp and no CAP_SYS_MODULE). Without
    tiergate, given CAP_SYS_MODULE and no seccomp filter, the call reaches the kernel: EBADF (9, past
    the permission check, at the bad fd), or ENOSYS (38) on a kernel built without module support
    (as here). Nothing is loaded either way."""
    got = env.run("web-unprivileged", "php", "-r", INIT_MODULE, args=["--user", "root"])
    ctl = env.run("web-unprivileged", "php", "-r", INIT_MODULE, hooked=False,
                  args=["--user", "root", "--cap-add", "SYS_MODULE", "--security-opt", "seccomp=unconfined"])
    print("\nweb (PHP as root):", got.stdout.strip(), got.stderr[-200:], "\ncontrol:", ctl.stdout.strip())
    assert got.stdout.strip() == "finit_module -1 errno 1"
    assert ctl.stdout.strip() in ("finit_module -1 errno 9", "finit_module -1 errno 38")


# --------------------------------------------------------------------------- database: PostgreSQL

PG = ("/usr/lib/postgresql/15/bin/postgres -D /var/lib/postgresql/15/main "
      "-c config_file=/etc/postgresql/15/main/postgresql.conf -c listen_addresses='*' -c hba_file=/tmp/hba.conf")
PG_START = ("printf 'local all all peer\\nhost all all 0.0.0.0/0 scram-sha-256\\nhost all all ::/0 scram-sha-256\\n'"
            f" > /tmp/hba.conf && ({PG} &) && i=0; until psql -qc \"ALTER USER postgres PASSWORD 'tg'\" 2>/dev/null;"
            " do i=$((i+1)); [ $i -lt 100 ] || exit 1; sleep 0.1; done; echo READY; exec sleep 300")


def test_database_postgresql(env):
    """PostgreSQL serves a client on another host; it cannot open a connection out, neither itself
    (dblink to a peer's port 5432, closed: without tiergate the peer's RST comes back, "Connection
    refused") nor through COPY ... TO PROGRAM."""
    p = env.peers
    out_sql = f"COPY (SELECT 1) TO PROGRAM 'timeout 3 busybox wget -q -O - http://{p.api}:80/'"
    dblink = (f"CREATE EXTENSION IF NOT EXISTS dblink; "
              f"SELECT dblink_connect('host={p.api} port=5432 connect_timeout=3 sslmode=disable')")
    results, links = {}, {}
    for hooked in (True, False):
        ip = p.next_ip()
        name = env.serve("database", PG_START, args=[*env.net_args(ip), "--user", "postgres"], hooked=hooked)
        client = env.run("software", "psql", "-h", ip, "-U", "postgres", "-tAc", "SELECT 6 * 7",
                         args=[*env.net_args(), "-e", "PGPASSWORD=tg", "-e", "PGCONNECT_TIMEOUT=5"], hooked=False)
        out = env.exec(name, "psql", "-tAc", out_sql)
        results[hooked] = (client.stdout.strip(), out.returncode, out.stderr.strip())
        links[hooked] = env.exec(name, "psql", "-tAc", dblink).stderr.strip()
        print(f"\n{'database' if hooked else 'control (no tiergate)'}:", results[hooked], links[hooked])
        env.podman.podman("rm", "-f", "--time", "0", name)
    print("proven with", versions_line(env, "postgresql-15"))
    assert env.tier_granted("database") == {"database"}
    assert results[True][0] == "42" and results[False][0] == "42"
    assert results[True][1] != 0 and "failed" in results[True][2]
    assert results[False][1] == 0, results[False]
    assert "timeout expired" in links[True], links[True]
    assert "Connection refused" in links[False], links[False]


# --------------------------------------------------------------------------- node-worker: Node.js

NODE = r"""
const http = require("http"), cp = require("child_process");
let forked;
try { const c = cp.fork("/srv/tg/child.js"); c.on("error", e => { forked = "error " + e.code; });
      c.on("exit", code => { forked = "exit " + code; }); } catch (e) { forked = "threw " + e.code; }
http.createServer((q, r) => r.end(`node-ok ${process.version} fork=${forked}\n`))
    .listen(8080, () => setTimeout(() => console.log("READY"), 500));
"""


def test_node_worker_nodejs(env):
    """A Node.js HTTP server answers a peer; child_process.fork fails under node-worker."""
    env.file("server.js", NODE)
    env.file("child.js", "process.exit(0);\n")
    results = {}
    for hooked in (True, False):
        ip = env.peers.next_ip()
        name = env.serve("node-worker", "exec node /srv/tg/server.js", args=env.net_args(ip), hooked=hooked)
        results[hooked] = env.peers.get_from_peers(f"http://{ip}:8080/")
        print(f"\n{'node-worker' if hooked else 'control (no tiergate)'}:", results[hooked])
        env.podman.podman("rm", "-f", "--time", "0", name)
    print("proven with", versions_line(env, "nodejs"))
    assert env.tier_granted("node-worker") == {"node-worker"}
    assert re.fullmatch(r"node-ok v18\.\S+ fork=threw EPERM\n", results[True] or ""), results[True]
    assert re.fullmatch(r"node-ok v18\.\S+ fork=exit 0\n", results[False] or ""), results[False]


# --------------------------------------------------------------------------- image-processor: ImageMagick

PERMISSIVE_POLICY = "<policymap>\n</policymap>\n"


def test_image_processor_imagemagick(env):
    """ImageMagick converts files; its URL coder cannot open a socket under image-processor, even
    with ImageMagick's own policy.xml (which denies HTTP) emptied, as an exploit in a decoder would."""
    p = env.peers
    out = env.dir / "im-out"
    out.mkdir()
    vol = ["-v", f"{out}:/out", "-v", f"{env.files}/policy.xml:/etc/ImageMagick-6/policy.xml:ro"]
    env.file("policy.xml", PERMISSIVE_POLICY)
    conv = env.run("image-processor", "sh", "-c", "convert rose: /out/rose.png && convert /out/rose.png "
                   "-resize 50% /out/small.jpg && identify /out/small.jpg", args=[*env.net_args(), *vol])
    print("\nimage-processor convert:", conv.stdout.strip(), conv.stderr.strip()[-200:])
    assert conv.returncode == 0 and "small.jpg JPEG 35x23" in conv.stdout
    (p.www / "rose.png").write_bytes((out / "rose.png").read_bytes())
    crafted = f"convert http://{p.api}:80/rose.png /out/fetched-$0.png && identify /out/fetched-$0.png"
    got = env.run("image-processor", "sh", "-c", crafted, "tg", args=[*env.net_args(), *vol])
    ctl = env.run("image-processor", "sh", "-c", crafted, "ctl", args=[*env.net_args(), *vol], hooked=False)
    print("URL coder:", got.returncode, got.stderr.strip()[-300:], "\ncontrol:", ctl.stdout.strip())
    print("proven with", versions_line(env, "imagemagick-6.q16"))
    assert env.tier_granted("image-processor") == {"image-processor"}
    assert ctl.returncode == 0 and (out / "fetched-ctl.png").exists()
    assert got.returncode != 0 and not (out / "fetched-tg.png").exists()
    assert "Operation not permitted" in got.stderr, got.stderr


# --------------------------------------------------------------------------- payment-worker: Python HTTPS

PAY = r"""
import json, ssl, sys, urllib.request
ctx = ssl.create_default_context(cafile="/srv/tg/ca.pem")
def post(url):
    req = urllib.request.Request(url, data=json.dumps({"amount": 1299}).encode(), method="POST")
    try:
        return urllib.request.urlopen(req, context=ctx, timeout=4).read().decode().strip()
    except Exception as e:
        return type(e).__name__
def write(path):
    try:
        open(path, "w").write("4111111111111111")
        return "ok"
    except OSError as e:
        return e.strerror
print(json.dumps({"psp": post(sys.argv[1]), "other": post(sys.argv[2]),
                  "tmp": write("/tmp/scratch"), "disk": write("/var/tmp/card")}))
"""


def test_payment_worker_python_https(env, tls_peer):
    """A Python HTTPS client posts to the allowlisted provider; it cannot write to disk or reach another host."""
    import json

    p = env.peers
    env.file("pay.py", PAY)
    cmd = ("python3", "/srv/tg/pay.py", f"https://{p.psp}/charge", f"https://{p.api}/charge")
    got = env.run("payment-worker", *cmd, args=env.net_args())
    ctl = env.run("payment-worker", *cmd, args=env.net_args(), hooked=False)
    print("\npayment-worker:", got.stdout.strip(), got.stderr[-300:], "\ncontrol:", ctl.stdout.strip())
    print("proven with", versions_line(env, "python3", "openssl"))
    assert env.tier_granted("payment-worker") == {"payment-worker"}
    assert json.loads(ctl.stdout) == {"psp": "paid 16", "other": "paid 16", "tmp": "ok", "disk": "ok"}
    assert json.loads(got.stdout) == {"psp": "paid 16", "other": json.loads(got.stdout)["other"], "tmp": "ok",
                                      "disk": "Read-only file system"}
    assert json.loads(got.stdout)["other"] in ("URLError", "TimeoutError", "timeout", "ConnectionRefusedError")


# --------------------------------------------------------------------------- scheduler: a periodic job

JOB = r"""
import socket, sys, time
def resolve():
    try: return socket.gethostbyname("payments.example")
    except OSError as e: return type(e).__name__
def connect():
    try: socket.create_connection((sys.argv[1], 80), timeout=3).close(); return "ok"
    except OSError as e: return type(e).__name__
print(time.strftime("%H:%M:%S"), "resolve", resolve(), "connect", connect(), flush=True)
"""


def test_scheduler_periodic_job(env, tls_peer):
    """A job run every second by a scheduler loop keeps running; it resolves and connects nowhere."""
    p = env.peers
    env.file("job.py", JOB)
    loop = (f"n=0; while [ $n -lt 3 ]; do python3 /srv/tg/job.py {p.api} >> /var/tmp/jobs.log; "
            "n=$((n+1)); sleep 1; done; cat /var/tmp/jobs.log")
    args = [*env.net_args(), "--dns", p.api, "--dns-option", "timeout:1", "--dns-option", "attempts:1"]
    got = env.run("scheduler", "sh", "-c", loop, args=args)
    ctl = env.run("scheduler", "sh", "-c", loop, args=args, hooked=False)
    print("\nscheduler:\n", got.stdout, got.stderr[-300:], "\ncontrol:\n", ctl.stdout)
    assert env.tier_granted("scheduler") == {"scheduler"}
    runs, ctl_runs = got.stdout.strip().splitlines(), ctl.stdout.strip().splitlines()
    assert len(runs) == 3 and len(ctl_runs) == 3
    assert all(r.endswith(f"resolve {p.api} connect ok") for r in ctl_runs), ctl_runs
    assert all(" resolve gaierror connect " in r and not r.endswith("connect ok") for r in runs), runs
