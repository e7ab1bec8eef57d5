#!/usr/bin/env python3
"""Compares kubectl-volbackup with restic on the same data, in one run.

Usage: bench/compare.py [--size-mib 1024] [--runs 3] [--s3] [--out FILE]

Builds nothing: run `cargo build --release -p kubectl-volbackup` first (or let bench/run do it).
Data (as in the engine issue): per 4 MiB block, 50 % fresh random, 25 % log-like text, 25 %
repeats of earlier random blocks. Repositories live on tmpfs. Every case runs --runs times,
alternating the two programs, and the table shows medians and the ratio restic/ours for time
(higher is better for us) and ours/restic for peak RSS (lower is better).
"""

import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
OURS = os.environ.get("VOLBACKUP_BIN") or os.path.join(ROOT, "target", "release", "kubectl-volbackup")
PASSWORD = "bench-password"
BLOCK = 4 << 20


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


def make_data(path, size):
    rng = random.Random(42)
    randoms = []
    with open(path, "wb") as f:
        for b in range(size // BLOCK):
            kind = rng.random()
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
            sys.exit("garage not found: cargo install --locked garage")
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
        subprocess.run(self.cli("bucket", "create", "bench"), check=True, capture_output=True)
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

    def repo(self, prefix):
        return "s3:http://127.0.0.1:%d/bench/%s" % (self.port, prefix)

    def stop(self):
        self.proc.terminate()
        self.proc.wait()


def run(cmd, env):
    """Runs a set-up command; stops the benchmark when it fails."""
    p = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    if p.returncode != 0:
        sys.exit("command failed (%d): %s\n%s" % (p.returncode, " ".join(cmd), p.stderr.decode(errors="replace")))


def run_rss(cmd, env):
    """Runs a measured command: (wall seconds, peak RSS in MiB). The command is exec'ed (no
    shell left around it), and its peak RSS includes this small driver's (about 10 MiB) because
    a forked child starts from its parent's peak."""
    start = time.perf_counter()
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    err = p.stderr.read()
    _, status, ru = os.wait4(p.pid, 0)
    secs = time.perf_counter() - start
    if status != 0:
        sys.exit("command failed (%d): %s\n%s" % (status, " ".join(cmd), err.decode(errors="replace")))
    return secs, ru.ru_maxrss / 1024.0


def main():
    if len(sys.argv) == 5 and sys.argv[1] == "--generate":
        make_data(sys.argv[2], int(sys.argv[4]))
        make_tree(sys.argv[2], sys.argv[3])
        return
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--s3", action="store_true", help="also back up through a local Garage (bench/garage.sh)")
    ap.add_argument("--out", help="also write the table (Markdown) to this file")
    args = ap.parse_args()
    if not os.path.exists(OURS):
        sys.exit("%s missing: run cargo build --release -p kubectl-volbackup" % OURS)
    if not shutil.which("restic"):
        sys.exit("restic not found: apt-get install restic")

    work = tempfile.mkdtemp(prefix="vb-bench-", dir="/dev/shm")
    garage = None
    try:
        data = os.path.join(work, "data.bin")
        print("generating %d MiB of data in %s" % (args.size_mib, work), file=sys.stderr)
        tree = os.path.join(work, "tree")
        # Generate in a child process: a forked child starts with its parent's peak RSS, so this
        # process must stay small for the peak RSS of the measured commands to mean anything.
        subprocess.run([sys.executable, os.path.abspath(__file__), "--generate", data, tree,
                        str(args.size_mib << 20)], check=True)
        size = os.path.getsize(data)
        env = dict(os.environ, RESTIC_PASSWORD=PASSWORD, VOLBACKUP_PASSWORD=PASSWORD,
                   RESTIC_CACHE_DIR=os.path.join(work, "restic-cache"))
        results = {}
        if args.s3:
            garage = Garage(work)

        def record(case, who, secs, rss):
            results.setdefault(case, {}).setdefault(who, []).append((secs, rss))

        for r in range(args.runs):
            print("run %d/%d" % (r + 1, args.runs), file=sys.stderr)
            for who in (["ours", "restic"] if r % 2 == 0 else ["restic", "ours"]):
                repo = os.path.join(work, "repo-" + who)
                shutil.rmtree(repo, ignore_errors=True)
                if who == "ours":
                    run([OURS, "repo", "init", "--repo", repo, "-q"], env)
                    s, m = run_rss([OURS, "mover", "backup", "-q", "--repo", repo, "--source", data, "--name", "data.bin"], env)
                    record("image backup (new repository)", who, s, m)
                    s, m = run_rss([OURS, "mover", "backup", "-q", "--repo", repo, "--source", data, "--name", "data.bin"], env)
                    record("image backup, unchanged (second run)", who, s, m)
                    target = os.path.join(work, "restored.img")
                    if os.path.exists(target):
                        os.remove(target)
                    s, m = run_rss([OURS, "mover", "restore", "-q", "--repo", repo, "--snapshot", "latest", "--target", target], env)
                    record("image restore (restic: dump)", who, s, m)
                    os.remove(target)
                    s, m = run_rss([OURS, "mover", "backup", "-q", "--repo", repo, "--source", tree], env)
                    record("tree backup", who, s, m)
                    out = os.path.join(work, "restored-tree")
                    shutil.rmtree(out, ignore_errors=True)
                    s, m = run_rss([OURS, "mover", "restore", "-q", "--repo", repo, "--snapshot", "latest", "--target", out], env)
                    record("tree restore", who, s, m)
                    shutil.rmtree(out)
                else:
                    run(["restic", "init", "-q", "--repo", repo], env)
                    s, m = run_rss(["sh", "-c", 'exec restic backup -q --repo "$0" --stdin --stdin-filename data.bin < "$1"', repo, data], env)
                    record("image backup (new repository)", who, s, m)
                    s, m = run_rss(["sh", "-c", 'exec restic backup -q --repo "$0" --stdin --stdin-filename data.bin < "$1"', repo, data], env)
                    record("image backup, unchanged (second run)", who, s, m)
                    target = os.path.join(work, "restored.img")
                    s, m = run_rss(["sh", "-c", 'exec restic dump -q --repo "$0" latest /data.bin > "$1"', repo, target], env)
                    record("image restore (restic: dump)", who, s, m)
                    os.remove(target)
                    s, m = run_rss(["sh", "-c", 'cd "$1" && exec restic backup -q --repo "$0" .', repo, tree], env)
                    record("tree backup", who, s, m)
                    out = os.path.join(work, "restored-tree")
                    shutil.rmtree(out, ignore_errors=True)
                    s, m = run_rss(["restic", "restore", "-q", "--repo", repo, "latest", "--target", out], env)
                    record("tree restore", who, s, m)
                    shutil.rmtree(out)
                shutil.rmtree(repo, ignore_errors=True)
            if garage:
                senv = dict(env, **garage.env())
                for who in (["ours", "restic"] if r % 2 == 0 else ["restic", "ours"]):
                    repo = garage.repo("%s-%d" % (who, r))
                    if who == "ours":
                        run([OURS, "repo", "init", "--repo", repo, "-q"], senv)
                        s, m = run_rss([OURS, "mover", "backup", "-q", "--repo", repo, "--source", data, "--name", "data.bin"], senv)
                    else:
                        run(["restic", "init", "-q", "--repo", repo], senv)
                        s, m = run_rss(["sh", "-c", 'exec restic backup -q --repo "$0" --stdin --stdin-filename data.bin < "$1"', repo, data], senv)
                    record("image backup to S3 (Garage on loopback)", who, s, m)

        lines = ["| case | ours (s) | restic (s) | speed-up | ours MB/s | peak RSS ours / restic (MiB) |",
                 "|---|---|---|---|---|---|"]
        for case, by in results.items():
            o = statistics.median(s for s, _ in by["ours"])
            r = statistics.median(s for s, _ in by["restic"])
            om = statistics.median(m for _, m in by["ours"])
            rm = statistics.median(m for _, m in by["restic"])
            lines.append("| %s | %.2f | %.2f | %.2f× | %.0f | %.0f / %.0f |" % (
                case, o, r, r / o, size / o / 1e6, om, rm))
        table = "\n".join(lines)
        print(table)
        if args.out:
            with open(args.out, "w") as f:
                f.write(table + "\n")
    finally:
        if garage:
            garage.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
