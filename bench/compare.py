#!/usr/bin/env python3
"""Compares kubectl-volbackup with restic (and rustic, when installed) on the same data.

Usage: bench/compare.py [--size-mib 512] [--runs 3] [--latency-ms 0,25] [--datasets mixed,zeros]
                        [--no-s3] [--tree] [--out FILE]

With --tree, the data is also split into a tree of files (4 KiB to 8 MiB) and restored from a
local repository by us and by `restic restore`.

Builds nothing: run `cargo build --release -p kubectl-volbackup` first (or let bench/run do it).

Data sets, per 4 MiB block: "mixed" is 50 % fresh random, 25 % log-like text, 25 % repeats of
earlier random blocks; "zeros" is the same with a quarter of the blocks all zeros instead (the
other kinds scaled down). Repositories and restore targets live on tmpfs (/dev/shm).

Cases, each run once as a warm-up and then --runs times, the programs alternating in order:
  local: image backup (ours, restic, rustic), image restore to a file (ours; ours writing each
         blob as it arrives, out of order; `restic restore`, `restic dump`, rustic), and the raw
         limit (every pack range the restore needs, read with 32 threads and thrown away);
  S3:    a single-node Garage started here, reached through a TCP proxy that holds back every
         request by the latency given (0, 10, 25, 50 ms...): image backups (direct at 0 ms,
         through the proxy at the other latencies; once each), image restores (ours, `restic
         restore`, `restic dump`, rustic through a profile of opendal options) and the raw
         limit (every needed pack range fetched with 32 requests in flight and thrown away).
         Each round of S3 restores runs every latency in turn (in rotating order), so that a
         slow spell of the machine does not fall on one latency alone and the ratio of two
         latencies compares runs made minutes apart at most. The proxy counts each
         restore's requests, and those made before its first pack read.
rustic takes part when it is on PATH (cargo install rustic-rs); the report says when it is not.
The table gives medians, the min-max spread and peak RSS; the issue's targets follow it.
"""

import argparse
import fcntl
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
OURS = os.environ.get("VOLBACKUP_BIN") or os.path.join(
    os.environ.get("CARGO_TARGET_DIR") or os.path.join(ROOT, "target"), "release", "kubectl-volbackup")
PASSWORD = "bench-password"
BLOCK = 4 << 20
RAW_THREADS = 32


# ---------------------------------------------------------------------------------------------
# data


def log_text(rng, n):
    words = ["GET", "POST", "/api/v1/items", "200", "404", "user=alice", "user=bob",
             "latency_ms=12", "latency_ms=873", "INFO", "WARN", "ERROR", "request served",
             "cache miss", "db query", "retrying", "connection reset", "session=7f3a"]
    out = []
    size = 0
    i = 0
    while size < n:
        line = "2026-11-%02d %02d:%02d:%02d.%03d %s\n" % (
            1 + i % 28, i % 24, i % 60, (i * 7) % 60, i % 1000,
            " ".join(rng.choice(words) for _ in range(8)))
        out.append(line)
        size += len(line)
        i += 1
    return "".join(out).encode()[:n]


def make_data(path, size, zeros):
    """Writes the data set; with `zeros`, a quarter of the blocks are all zeros."""
    rng = random.Random(42)
    randoms = []
    zero = bytes(BLOCK)
    with open(path, "wb") as f:
        for _ in range(size // BLOCK):
            kind = rng.random()
            if zeros:
                if kind < 0.25:
                    f.write(zero)
                    continue
                kind = (kind - 0.25) / 0.75
            if kind < 0.5 or not randoms:
                blk = os.urandom(BLOCK)
                randoms.append(blk)
                if len(randoms) > 64:
                    randoms.pop(0)
            elif kind < 0.75:
                blk = log_text(rng, BLOCK)
            else:
                blk = rng.choice(randoms)
            f.write(blk)


def make_tree(src, dst):
    """Splits the data file into a tree of files of mixed sizes (4 KiB to 8 MiB)."""
    rng = random.Random(7)
    with open(src, "rb") as f:
        i = 0
        while True:
            n = rng.choice([4 << 10, 64 << 10, 512 << 10, 2 << 20, 8 << 20])
            data = f.read(n)
            if not data:
                break
            d = os.path.join(dst, "d%02d" % (i % 16), "s%d" % (i % 3))
            os.makedirs(d, exist_ok=True)
            with open(os.path.join(d, "f%05d.bin" % i), "wb") as out:
                out.write(data)
            i += 1


# ---------------------------------------------------------------------------------------------
# servers


class Garage:
    """A single-node Garage on loopback (the facts are in ../shared/TESTING.md)."""

    def __init__(self, work):
        import socket
        self.dir = os.path.join(work, "garage")
        os.makedirs(self.dir)
        ports = []
        for _ in range(3):
            with socket.socket() as sk:
                sk.bind(("127.0.0.1", 0))
                ports.append(sk.getsockname()[1])
        self.port = ports[0]
        self.config = os.path.join(self.dir, "garage.toml")
        with open(self.config, "w") as f:
            f.write(f"""metadata_dir = "{self.dir}/meta"
data_dir = "{self.dir}/data"
db_engine = "sqlite"
replication_factor = 1
rpc_bind_addr = "127.0.0.1:{ports[1]}"
rpc_public_addr = "127.0.0.1:{ports[1]}"
rpc_secret = "{os.urandom(32).hex()}"

[s3_api]
s3_region = "garage"
api_bind_addr = "127.0.0.1:{ports[0]}"
root_domain = ".s3.garage.localhost"

[admin]
api_bind_addr = "127.0.0.1:{ports[2]}"
""")
        binary = shutil.which("garage") or os.path.expanduser("~/.cargo/bin/garage")
        if not os.path.exists(binary):
            sys.exit("garage not found (cargo install --locked garage), or run with --no-s3")
        self.bin = binary
        self.proc = subprocess.Popen([binary, "-c", self.config, "server"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        node = None
        for _ in range(100):
            p = subprocess.run(self.cli("status"), capture_output=True, text=True)
            for line in p.stdout.splitlines():
                parts = line.split()
                if parts and len(parts[0]) == 16 and all(c in "0123456789abcdef" for c in parts[0]):
                    node = parts[0]
            if node:
                break
            time.sleep(0.2)
        if not node:
            sys.exit("garage did not start")
        subprocess.run(self.cli("layout", "assign", "-z", "dc1", "-c", "10G", node), check=True, capture_output=True)
        subprocess.run(self.cli("layout", "apply", "--version", "1"), check=True, capture_output=True)
        for _ in range(50):
            if subprocess.run(self.cli("bucket", "create", "bench"), capture_output=True).returncode == 0:
                break
            time.sleep(0.2)
        out = subprocess.run(self.cli("key", "create", "bench-key"), check=True, capture_output=True, text=True).stdout
        self.key_id = next(l.split(":", 1)[1].strip() for l in out.splitlines() if l.strip().startswith("Key ID"))
        self.secret = next(l.split(":", 1)[1].strip() for l in out.splitlines() if l.strip().startswith("Secret key"))
        subprocess.run(self.cli("bucket", "allow", "--read", "--write", "--owner", "bench", "--key", "bench-key"),
                       check=True, capture_output=True)

    def cli(self, *args):
        return [self.bin, "-c", self.config] + list(args)

    def env(self):
        return {"AWS_ACCESS_KEY_ID": self.key_id, "AWS_SECRET_ACCESS_KEY": self.secret,
                "AWS_DEFAULT_REGION": "garage", "AWS_REGION": "garage"}

    def get(self, path):
        """The object at `path` ("bucket/key"), read with a signed GET (AWS signature v4)."""
        import hashlib, hmac, urllib.request
        from datetime import datetime, timezone
        now = datetime.now(timezone.utc)
        stamp, day = now.strftime("%Y%m%dT%H%M%SZ"), now.strftime("%Y%m%d")
        host = "127.0.0.1:%d" % self.port
        empty = hashlib.sha256(b"").hexdigest()
        headers = {"host": host, "x-amz-content-sha256": empty, "x-amz-date": stamp}
        names = ";".join(sorted(headers))
        canonical = "\n".join(["GET", "/" + path, ""] + ["%s:%s" % (k, headers[k]) for k in sorted(headers)]
                              + ["", names, empty])
        scope = "%s/garage/s3/aws4_request" % day
        to_sign = "\n".join(["AWS4-HMAC-SHA256", stamp, scope, hashlib.sha256(canonical.encode()).hexdigest()])
        key = ("AWS4" + self.secret).encode()
        for part in (day, "garage", "s3", "aws4_request"):
            key = hmac.new(key, part.encode(), hashlib.sha256).digest()
        signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
        request = urllib.request.Request("http://%s/%s" % (host, path), headers={
            "x-amz-content-sha256": empty, "x-amz-date": stamp,
            "Authorization": "AWS4-HMAC-SHA256 Credential=%s/%s, SignedHeaders=%s, Signature=%s"
                             % (self.key_id, scope, names, signature)})
        with urllib.request.urlopen(request) as answer:
            return answer.read()

    def stop(self):
        self.proc.terminate()
        self.proc.wait()


class LatencyProxy:
    """A TCP proxy on loopback that holds every request back by `delay` seconds before passing
    it on. A request is what the client sends after the server last answered on that
    connection, so keep-alive connections pay the delay per request, as behind a distant
    object store.

    The proxy shares the machine's cores with the programs it measures, so it costs as little
    as it can: a thread per direction and connection, requests read to see where they start,
    answers moved server to client with splice(2) through a pipe, without passing through
    this process's memory."""

    CHUNK = 1 << 20

    def __init__(self, upstream_port, quickack=True):
        self.upstream = upstream_port
        self.delay = 0.0
        # Garage sends an answer's headers and its body in two writes with Nagle's algorithm
        # on, so a body of a few hundred bytes waits for the ACK of the headers, which this
        # end's kernel delays by up to 40 ms (it has nothing to send back). Acknowledging at
        # once (TCP_QUICKACK, which the kernel clears again, hence before and after every
        # read) keeps the proxy to the delay it is asked for.
        self.quickack = quickack
        # The first line of every request since the last reset (e.g. "GET /bench/x/config").
        self.requests = []
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(256)
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self.accept, daemon=True).start()

    def accept(self):
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self.handle, args=(client,), daemon=True).start()

    def handle(self, client):
        try:
            up = socket.create_connection(("127.0.0.1", self.upstream))
        except OSError:
            client.close()
            return
        for s in (client, up):
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        answered = threading.Event()
        answered.set()
        back = threading.Thread(target=self.answers, args=(up, client, answered), daemon=True)
        back.start()
        try:
            while True:
                data = client.recv(self.CHUNK)
                if not data:
                    break
                if answered.is_set():
                    answered.clear()
                    self.requests.append(data.split(b"\r\n", 1)[0].decode(errors="replace"))
                    if self.delay:
                        time.sleep(self.delay)
                up.sendall(data)
        except OSError:
            pass
        finally:
            try:
                up.shutdown(socket.SHUT_WR)
            except OSError:
                pass
        back.join()
        client.close()
        up.close()

    def answers(self, up, client, answered):
        """Moves the server's answers to the client until the server closes."""
        r, w = os.pipe()
        try:
            try:
                fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, self.CHUNK)
            except OSError:
                pass  # the default pipe size works too, in smaller steps
            while True:
                if self.quickack:
                    up.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
                n = os.splice(up.fileno(), w, self.CHUNK)
                if self.quickack:
                    up.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
                if n == 0:
                    break
                answered.set()
                while n:
                    n -= os.splice(r, client.fileno(), n)
        except OSError:
            pass
        finally:
            os.close(r)
            os.close(w)
            try:
                client.shutdown(socket.SHUT_WR)
            except OSError:
                pass

    def counts(self):
        """(requests since the last reset, of which before the first read of a pack) and
        resets the count."""
        reqs, self.requests = self.requests, []
        first = next((i for i, r in enumerate(reqs) if "/data/" in r), len(reqs))
        return len(reqs), first


# ---------------------------------------------------------------------------------------------
# measuring


def run(cmd, env, stdout=subprocess.DEVNULL):
    """Runs a set-up command; stops the benchmark when it fails. Returns its stdout."""
    p = subprocess.run(cmd, env=env, stdout=stdout, stderr=subprocess.PIPE)
    if p.returncode != 0:
        sys.exit("command failed (%d): %s\n%s" % (p.returncode, " ".join(cmd), p.stderr.decode(errors="replace")))
    return p.stdout


def key_hints(env, ours, restics, garage):
    """`env` with the key file of repository `ours` as VOLBACKUP_KEY_HINT and a copy of it as
    VOLBACKUP_KEY_COPY, as the repository Secrets of `create` carry them, and that of
    `restics` as RESTIC_KEY_HINT, which restic takes too (rustic has no such setting). Both
    are S3 repositories in `garage`."""
    import base64
    def key(loc):
        return run(["restic", "list", "keys", "-q", "--repo", loc], env,
                   stdout=subprocess.PIPE).decode().split()[0]
    ours_key = key(ours)
    # "s3:http://host:port/bucket/prefix": the object is "bucket/prefix/keys/<id>".
    path = ours.split("://", 1)[1].split("/", 1)[1]
    copy = garage.get("%s/keys/%s" % (path, ours_key))
    return dict(env, VOLBACKUP_KEY_HINT=ours_key, VOLBACKUP_KEY_COPY=base64.b64encode(copy).decode(),
                RESTIC_KEY_HINT=key(restics))


def run_rss(cmd, env):
    """Runs a measured command: (wall seconds, peak RSS in MiB). The command is exec'ed (no
    shell left around it), and its peak RSS includes this small driver's (about 10-20 MiB)
    because a forked child starts from its parent's peak."""
    start = time.perf_counter()
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    err = p.stderr.read()
    _, status, ru = os.wait4(p.pid, 0)
    secs = time.perf_counter() - start
    if status != 0:
        sys.exit("command failed (%d): %s\n%s" % (status, " ".join(cmd), err.decode(errors="replace")))
    return secs, ru.ru_maxrss / 1024.0


def planned_reads(repo, env):
    """The pack reads our restore of the latest snapshot makes: [(pack, offset, length)]."""
    import json
    out = run([OURS, "mover", "restore", "--repo", repo, "--snapshot", "latest", "--target", "/dev/null",
               "--dry-run", "--json"], env, stdout=subprocess.PIPE)
    reads = []
    for line in out.decode().splitlines():
        r = json.loads(line)
        reads.append((r["pack"], r["offset"], r["length"]))
    return reads


def parallel(items, fn):
    """Calls fn on every item with RAW_THREADS threads."""
    items = list(items)
    lock = threading.Lock()
    errors = []

    def worker():
        while True:
            with lock:
                if not items or errors:
                    return
                item = items.pop()
            try:
                fn(item)
            except Exception as e:  # noqa: BLE001 - reported below
                errors.append(e)
                return

    threads = [threading.Thread(target=worker) for _ in range(RAW_THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        sys.exit("raw read failed: %s" % errors[0])


def raw_local(repo, reads):
    """Reads every range from the pack files and throws the bytes away: seconds."""
    start = time.perf_counter()

    def one(r):
        pack, off, length = r
        with open(os.path.join(repo, "data", pack[:2], pack), "rb") as f:
            got = os.pread(f.fileno(), length, off)
        if len(got) != length:
            raise IOError("short read of %s" % pack)

    parallel(reads, one)
    return time.perf_counter() - start


def raw_s3(endpoint, prefix, reads, garage):
    """Fetches every range over S3 (signed GETs, RAW_THREADS in flight) and throws the bytes
    away: seconds."""
    import boto3
    from botocore.config import Config
    client = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=garage.key_id,
                          aws_secret_access_key=garage.secret, region_name="garage",
                          config=Config(s3={"addressing_style": "path"},
                                        max_pool_connections=RAW_THREADS))
    start = time.perf_counter()

    def one(r):
        pack, off, length = r
        body = client.get_object(Bucket="bench", Key="%s/data/%s/%s" % (prefix, pack[:2], pack),
                                 Range="bytes=%d-%d" % (off, off + length - 1))["Body"]
        n = 0
        while True:
            chunk = body.read(1 << 20)
            if not chunk:
                break
            n += len(chunk)
        if n != length:
            raise IOError("short read of %s" % pack)

    parallel(reads, one)
    return time.perf_counter() - start


def raw_in_child(kind, reads, *args):
    """Runs a raw read (raw_local or raw_s3) in a child process and returns its seconds: the
    driver must stay small, since a forked child starts from its parent's peak RSS and boto3
    with 32 threads would inflate every later measurement."""
    import json
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump({"kind": kind, "reads": reads, "args": list(args)}, f)
    try:
        out = subprocess.run([sys.executable, os.path.abspath(__file__), "--raw", f.name],
                             check=True, capture_output=True, text=True).stdout
    finally:
        os.remove(f.name)
    return float(out.strip())


def raw_main(spec_file):
    import json

    class Keys:
        pass
    with open(spec_file) as f:
        spec = json.load(f)
    reads = [tuple(r) for r in spec["reads"]]
    if spec["kind"] == "local":
        secs = raw_local(spec["args"][0], reads)
    else:
        endpoint, prefix, key_id, secret = spec["args"]
        keys = Keys()
        keys.key_id, keys.secret = key_id, secret
        secs = raw_s3(endpoint, prefix, reads, keys)
    print("%.6f" % secs)


def same_file(a, b):
    import hashlib

    def digest(p):
        h = hashlib.sha256()
        with open(p, "rb") as f:
            while True:
                c = f.read(8 << 20)
                if not c:
                    return h.hexdigest()
                h.update(c)
    return digest(a) == digest(b)


# ---------------------------------------------------------------------------------------------
# cases


class Results:
    def __init__(self):
        self.data = {}
        # case -> program -> [(requests, requests before the first pack read)]
        self.requests = {}

    def add_requests(self, case, who, counts):
        self.requests.setdefault(case, {}).setdefault(who, []).append(counts)

    def add(self, case, who, secs, rss):
        self.data.setdefault(case, {}).setdefault(who, []).append((secs, rss))

    def median(self, case, who):
        runs = self.data.get(case, {}).get(who)
        return statistics.median(s for s, _ in runs) if runs else None

    def spread(self, case, who):
        runs = self.data.get(case, {}).get(who)
        return max(s for s, _ in runs) / min(s for s, _ in runs) if runs else None

    def rss(self, case, who):
        runs = self.data.get(case, {}).get(who)
        return statistics.median(m for _, m in runs) if runs else None


def rustic_s3_profile(work, garage, endpoint, prefix):
    """Writes a rustic profile for an S3 repository (rustic takes S3 settings only from a
    config file, as opendal options) into $XDG_CONFIG_HOME/rustic; returns its name."""
    name = "s3-" + prefix
    d = os.path.join(work, "xdg", "rustic")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name + ".toml"), "w") as f:
        f.write("""[repository]
repository = "opendal:s3"

[repository.options]
endpoint = "%s"
bucket = "bench"
root = "/%s"
region = "garage"
access_key_id = "%s"
secret_access_key = "%s"
""" % (endpoint, prefix, garage.key_id, garage.secret))
    return name


def restore_cmds(repo, target_dir, rustic, rustic_profile=None):
    """The image restore commands, by program: each writes data.bin into target_dir."""
    target = os.path.join(target_dir, "data.bin")
    cmds = {
        "ours": [OURS, "mover", "restore", "-q", "--repo", repo, "--snapshot", "latest", "--target", target],
        "restic restore": ["restic", "restore", "-q", "--repo", repo, "latest", "--target", target_dir],
        "restic dump": ["sh", "-c", 'exec restic dump -q --repo "$0" latest /data.bin > "$1"', repo, target],
    }
    if rustic and rustic_profile:
        cmds["rustic"] = [rustic, "-P", rustic_profile, "restore", "--no-progress", "latest", target_dir]
    elif rustic:
        cmds["rustic"] = [rustic, "restore", "--repository", repo, "--no-progress", "latest", target_dir]
    return cmds


def measure_restores(results, settings, env, work, data, rounds, proxy=None):
    """Runs every restore command of every setting `rounds` times after a warm-up round,
    checking each result of the warm-up against the data. A setting is (case, commands, raw,
    delay): `raw` (a function giving seconds, or None) is the limit, `delay` the proxy's delay
    in seconds (None: no proxy). Each round runs every setting and in it every command, both in
    rotating order, so that a slow spell of the machine does not fall on one latency or one
    program alone. Through the proxy, the requests each program makes are counted too."""
    for case, cmds, _, delay in settings:
        # The tables list the cases in the order given, whichever ran first.
        for who in cmds:
            results.data.setdefault(case, {}).setdefault(who, [])
            if delay is not None:
                results.requests.setdefault(case, {}).setdefault(who, [])
    for r in range(rounds + 1):
        for case, cmds, raw, delay in settings[r % len(settings):] + settings[:r % len(settings)]:
            if delay is not None:
                proxy.delay = delay
            names = list(cmds)
            for who in names[r % len(names):] + names[:r % len(names)]:
                out = os.path.join(work, "restore-out")
                shutil.rmtree(out, ignore_errors=True)
                os.makedirs(out)
                if delay is not None:
                    proxy.counts()
                secs, rss = run_rss(cmds[who], env)
                if delay is not None:
                    results.add_requests(case, who, proxy.counts())
                if r == 0 and not same_file(os.path.join(out, "data.bin"), data):
                    sys.exit("%s restored different bytes (%s)" % (who, case))
                shutil.rmtree(out)
                if r > 0:
                    results.add(case, who, secs, rss)
            if raw:
                secs = raw()
                if r > 0:
                    results.add(case, "raw limit", secs, 0)
    if proxy:
        proxy.delay = 0


def bench_dataset(name, args, work, env, garage, proxy, results, rustic):
    data = os.path.join(work, "data-%s.bin" % name)
    print("[%s] generating %d MiB" % (name, args.size_mib), file=sys.stderr)
    # A child process generates it: a forked child starts with its parent's peak RSS, so this
    # process must stay small for the peak RSS of the measured commands to mean anything.
    subprocess.run([sys.executable, os.path.abspath(__file__), "--generate", data, name,
                    str(args.size_mib << 20)], check=True)
    backup = {
        "ours": lambda repo: [OURS, "mover", "backup", "-q", "--repo", repo, "--source", data, "--name", "data.bin"],
        "restic": lambda repo: ["sh", "-c", 'exec restic backup -q --repo "$0" --stdin --stdin-filename data.bin < "$1"',
                                repo, data],
    }
    init = {
        "ours": lambda repo: [OURS, "repo", "init", "--repo", repo, "-q"],
        "restic": lambda repo: ["restic", "init", "-q", "--repo", repo],
    }
    if rustic:
        backup["rustic"] = lambda repo: ["sh", "-c", 'exec "$0" backup --repository "$1" --no-progress '
                                         '--stdin-filename data.bin - < "$2"', rustic, repo, data]
        init["rustic"] = lambda repo: [rustic, "init", "--repository", repo, "--no-progress"]

    # Local image backups into new repositories.
    print("[%s] local backups" % name, file=sys.stderr)
    programs = list(backup)
    for r in range(args.runs + 1):
        for who in programs[r % len(programs):] + programs[:r % len(programs)]:
            repo = os.path.join(work, "repo-%s-%s" % (name, who))
            shutil.rmtree(repo, ignore_errors=True)
            run(init[who](repo), env)
            secs, rss = run_rss(backup[who](repo), env)
            if r > 0:
                results.add("%s: image backup, local" % name, who, secs, rss)
    # Both repositories stay: restores read each program's own.
    local_ours = os.path.join(work, "repo-%s-ours" % name)
    local_restic = os.path.join(work, "repo-%s-restic" % name)
    shutil.rmtree(os.path.join(work, "repo-%s-rustic" % name), ignore_errors=True)

    print("[%s] local restores" % name, file=sys.stderr)
    reads = planned_reads(local_ours, env)
    cmds = restore_cmds(local_ours, os.path.join(work, "restore-out"), rustic)
    for peer in [k for k in cmds if k != "ours"]:
        cmds[peer] = restore_cmds(local_restic, os.path.join(work, "restore-out"), rustic)[peer]
    # The same restore writing each blob where it belongs as it arrives (out of order).
    cmds["ours, out of order"] = cmds["ours"] + ["--reorder-window-mib", "0"]
    measure_restores(results, [("%s: image restore, local" % name, cmds,
                                lambda: raw_in_child("local", reads, local_ours), None)],
                     env, work, data, args.runs)

    if garage:
        senv = dict(env, **garage.env())
        direct = "http://127.0.0.1:%d" % garage.port
        repos = {}
        for who in ("ours", "restic"):
            prefix = "%s-%s" % (name, who)
            repos[who] = prefix
            loc = "s3:%s/bench/%s" % (direct, prefix)
            print("[%s] backing up to S3 (%s)" % (name, who), file=sys.stderr)
            run(init[who](loc), senv)
            secs, rss = run_rss(backup[who](loc), key_hints(senv, loc, loc, garage))
            results.add("%s: image backup to S3, 0 ms" % name, who, secs, rss)
        via = "http://127.0.0.1:%d" % proxy.port
        # Backups through the proxy, into repositories of their own, once each.
        for ms in [m for m in args.latencies if m > 0]:
            proxy.delay = ms / 1000.0
            print("[%s] backing up to S3 at %d ms" % (name, ms), file=sys.stderr)
            for who in ("restic", "ours"):
                loc = "s3:%s/bench/%s-%s-%dms" % (via, name, who, ms)
                run(init[who](loc), senv)
                secs, rss = run_rss(backup[who](loc), key_hints(senv, loc, loc, garage))
                results.add("%s: image backup to S3, %d ms" % (name, ms), who, secs, rss)
        proxy.delay = 0
        s3_reads = planned_reads("s3:%s/bench/%s" % (direct, repos["ours"]), senv)
        print("[%s] S3 restores at %s ms, one after the other in each round"
              % (name, ", ".join(str(ms) for ms in args.latencies)), file=sys.stderr)
        out_dir = os.path.join(work, "restore-out")
        # rustic reads the restic repository through a profile of its own (opendal options).
        profile = rustic and rustic_s3_profile(work, garage, via, repos["restic"])
        cmds = restore_cmds("s3:%s/bench/%s" % (via, repos["ours"]), out_dir, None)
        peers = restore_cmds("s3:%s/bench/%s" % (via, repos["restic"]), out_dir, rustic, profile)
        for peer in [k for k in peers if k != "ours"]:
            cmds[peer] = peers[peer]
        raw = lambda: raw_in_child("s3", s3_reads, via, repos["ours"], garage.key_id, garage.secret)
        settings = [("%s: image restore, S3 %d ms" % (name, ms), cmds, raw, ms / 1000.0)
                    for ms in args.latencies]
        hinted = key_hints(senv, "s3:%s/bench/%s" % (direct, repos["ours"]),
                           "s3:%s/bench/%s" % (direct, repos["restic"]), garage)
        measure_restores(results, settings, hinted, work, data, args.runs, proxy)
    if args.tree:
        bench_tree(name, args, work, env, data, results)
    os.remove(data)
    shutil.rmtree(local_ours, ignore_errors=True)
    shutil.rmtree(local_restic, ignore_errors=True)


def bench_tree(name, args, work, env, data, results):
    """A tree made of the data (files of 4 KiB to 8 MiB): restore, ours and restic's."""
    tree = os.path.join(work, "tree")
    make_tree(data, tree)
    repos = {w: os.path.join(work, "tree-repo-" + w) for w in ("ours", "restic")}
    run([OURS, "repo", "init", "--repo", repos["ours"], "-q"], env)
    run([OURS, "mover", "backup", "-q", "--repo", repos["ours"], "--source", tree], env)
    run(["restic", "init", "-q", "--repo", repos["restic"]], env)
    run(["sh", "-c", 'cd "$1" && exec restic backup -q --repo "$0" .', repos["restic"], tree], env)
    out = os.path.join(work, "restored-tree")
    cmds = {
        "ours": [OURS, "mover", "restore", "-q", "--repo", repos["ours"], "--snapshot", "latest", "--target", out],
        "restic restore": ["restic", "restore", "-q", "--repo", repos["restic"], "latest", "--target", out],
    }
    print("[%s] tree restores" % name, file=sys.stderr)
    for r in range(args.runs + 1):
        for who in (["ours", "restic restore"] if r % 2 == 0 else ["restic restore", "ours"]):
            shutil.rmtree(out, ignore_errors=True)
            secs, rss = run_rss(cmds[who], env)
            if r > 0:
                results.add("%s: tree restore, local" % name, who, secs, rss)
    shutil.rmtree(out, ignore_errors=True)
    shutil.rmtree(tree)
    for repo in repos.values():
        shutil.rmtree(repo)


def table(results, size):
    lines = ["| case | program | median (s) | min–max (s) | spread | MB/s | peak RSS (MiB) |",
             "|---|---|---|---|---|---|---|"]
    for case, by in results.data.items():
        for who, runs in by.items():
            secs = [s for s, _ in runs]
            med = statistics.median(secs)
            rss = results.rss(case, who)
            lines.append("| %s | %s | %.2f | %.2f–%.2f | %.2f | %.0f | %s |" % (
                case, who, med, min(secs), max(secs), max(secs) / min(secs), size / med / 1e6,
                "%.0f" % rss if rss else "–"))
    return "\n".join(lines)


def request_table(results):
    """Requests each program made through the proxy, per S3 restore (the last run's; they do
    not vary between runs)."""
    lines = ["| case | program | requests | before the first pack read |", "|---|---|---|---|"]
    for case, by in results.requests.items():
        for who, counts in by.items():
            total, before = counts[-1]
            lines.append("| %s | %s | %d | %d |" % (case, who, total, before))
    return "\n".join(lines)


def verdicts(results, datasets, latencies):
    """The issue's targets, met or not, from the medians."""
    out = []

    def ratio(a, b):
        return a / b if a and b else None

    def line(what, value, ok, fmt="%.2f×"):
        if value is None:
            out.append("- %s: not measured" % what)
        else:
            out.append("- %s: %s — %s" % (what, fmt % value, "met" if ok(value) else "NOT met"))

    for d in datasets:
        med = results.median
        if 25 in latencies:
            s3 = "%s: image restore, S3 25 ms" % d
            line("[%s] S3 image restore at 25 ms, restic restore / ours (target ≥ 1.5×)" % d,
                 ratio(med(s3, "restic restore"), med(s3, "ours")), lambda v: v >= 1.5)
            if 0 in latencies:
                s0 = "%s: image restore, S3 0 ms" % d
                line("[%s] ours at 25 ms / ours at 0 ms (target ≤ 1.15×)" % d,
                     ratio(med(s3, "ours"), med(s0, "ours")), lambda v: v <= 1.15)
        loc = "%s: image restore, local" % d
        line("[%s] local image restore, restic restore / ours (target ≥ 2×)" % d,
             ratio(med(loc, "restic restore"), med(loc, "ours")), lambda v: v >= 2)
        line("[%s] local image restore, restic dump / ours (target ≥ 3×)" % d,
             ratio(med(loc, "restic dump"), med(loc, "ours")), lambda v: v >= 3)
        line("[%s] local image restore, our spread max/min (target < 1.5)" % d,
             results.spread(loc, "ours"), lambda v: v < 1.5, "%.2f")
        ooo = med(loc, "ours, out of order")
        if ooo:
            out.append("- [%s] local image restore writing in order: %.2f s (spread %.2f); each blob as it "
                       "arrives: %.2f s (spread %.2f)" % (d, med(loc, "ours"), results.spread(loc, "ours"),
                                                         ooo, results.spread(loc, "ours, out of order")))
        bk = "%s: image backup, local" % d
        line("[%s] image backup, restic / ours (target ≥ 2×)" % d,
             ratio(med(bk, "restic"), med(bk, "ours")), lambda v: v >= 2)
        if med(bk, "rustic"):
            line("[%s] image backup, rustic / ours (target ≥ 1.5×)" % d,
                 ratio(med(bk, "rustic"), med(bk, "ours")), lambda v: v >= 1.5)
        if 25 in latencies:
            bk25 = "%s: image backup to S3, 25 ms" % d
            line("[%s] image backup to S3 at 25 ms, restic / ours (target ≥ 2×)" % d,
                 ratio(med(bk25, "restic"), med(bk25, "ours")), lambda v: v >= 2)
            s3 = "%s: image restore, S3 25 ms" % d
            if med(s3, "rustic"):
                line("[%s] S3 image restore at 25 ms, rustic / ours (target ≥ 2×)" % d,
                     ratio(med(s3, "rustic"), med(s3, "ours")), lambda v: v >= 2)
            raw, peer = med(s3, "raw limit"), med(s3, "restic restore")
            what = "[%s] S3 image restore at 25 ms, raw limit / ours (≥ 90 %% where 1.5× restic is out of reach)" % d
            if raw and peer and raw * 1.5 <= peer:
                # The limit leaves room for 1.5× restic: that target applies, not this one.
                out.append("- %s: %.2f — does not apply (the raw limit, %.2f s, is within %.2f s = "
                           "restic restore / 1.5)" % (what, ratio(raw, med(s3, "ours")) or 0, raw, peer / 1.5))
            elif raw:
                line(what, ratio(raw, med(s3, "ours")), lambda v: v >= 0.9, "%.2f")
        for case in [c for c in results.data if c.startswith(d + ": image backup")]:
            line("[%s] peak RSS ours / restic, %s (target ≤ 1)" % (d, case.split(": ", 1)[1]),
                 ratio(results.rss(case, "ours"), results.rss(case, "restic")), lambda v: v <= 1)
        for case in [c for c in results.data if c.startswith(d + ": image restore")]:
            ours, peer = results.rss(case, "ours"), results.rss(case, "restic restore")
            line("[%s] peak RSS ours / restic restore, %s (target ≤ 1)" % (d, case.split(": ", 1)[1]),
                 ratio(ours, peer), lambda v: v <= 1)
    return "\n".join(out)


def main():
    if len(sys.argv) == 5 and sys.argv[1] == "--generate":
        make_data(sys.argv[2], int(sys.argv[4]), sys.argv[3] == "zeros")
        return
    if len(sys.argv) == 3 and sys.argv[1] == "--raw":
        raw_main(sys.argv[2])
        return
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mib", type=int, default=512)
    ap.add_argument("--runs", type=int, default=3, help="measured rounds (after one warm-up round)")
    ap.add_argument("--latency-ms", default="0,25", help="per-request delays of the proxy, e.g. 0,10,25,50")
    ap.add_argument("--datasets", default="mixed,zeros")
    ap.add_argument("--no-s3", action="store_true", help="local repositories only")
    ap.add_argument("--tree", action="store_true", help="also restore the data as a tree of files")
    ap.add_argument("--out", help="also write the table (Markdown) to this file")
    ap.add_argument("--delayed-acks", action="store_true",
                    help="let the proxy delay its ACKs to Garage as the kernel likes (small answers "
                         "then often wait 40 ms; see LatencyProxy)")
    args = ap.parse_args()
    args.latencies = [int(x) for x in args.latency_ms.split(",") if x != ""]
    datasets = [d for d in args.datasets.split(",") if d]
    if not os.path.exists(OURS):
        sys.exit("%s missing: run cargo build --release -p kubectl-volbackup" % OURS)
    if not shutil.which("restic"):
        sys.exit("restic not found: apt-get install restic")
    rustic = shutil.which("rustic")
    if rustic:
        print("rustic: %s" % rustic, file=sys.stderr)
    else:
        print("rustic is not installed: the rustic column is left out (cargo install rustic-rs)",
              file=sys.stderr)

    work = tempfile.mkdtemp(prefix="vb-bench-", dir="/dev/shm")
    garage = None
    try:
        env = dict(os.environ, RESTIC_PASSWORD=PASSWORD, VOLBACKUP_PASSWORD=PASSWORD,
                   RUSTIC_PASSWORD=PASSWORD, RESTIC_CACHE_DIR=os.path.join(work, "restic-cache"),
                   RUSTIC_NO_CACHE="true", XDG_CONFIG_HOME=os.path.join(work, "xdg"))
        proxy = None
        if not args.no_s3:
            garage = Garage(work)
            proxy = LatencyProxy(garage.port, quickack=not args.delayed_acks)
        results = Results()
        for d in datasets:
            bench_dataset(d, args, work, env, garage, proxy, results, rustic)
        report = "%s\n\n%s\n" % (table(results, args.size_mib << 20), verdicts(results, datasets, args.latencies))
        if results.requests:
            report += "\n%s\n" % request_table(results)
        if not rustic:
            report += "\nrustic: not installed, not measured.\n"
        print(report)
        if args.out:
            with open(args.out, "w") as f:
                f.write(report)
    finally:
        if garage:
            garage.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
