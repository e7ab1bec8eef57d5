#!/usr/bin/env bash
# The README's quick start on a real cluster: kind, csi-driver-host-path with the snapshot
# CRDs and controller, an S3 bucket served by a MinIO pod, and this checkout's plugin and
# image. For anyone with Docker and kind (Linux: the host reaches the kind node's address);
# our CI machines have no Docker engine, so CI only lints this script.
#
#   tests/e2e-kind.sh            # creates the kind cluster volbackup-e2e, runs, deletes it
#   KEEP=1 tests/e2e-kind.sh     # leaves the cluster running to look around
#
# Needs: docker, kind, kubectl, git, cargo; an amd64 machine (the image is built for amd64).
# Exits non-zero when any step fails or the restored data differs.
set -euo pipefail
cd "$(dirname "$0")/.."

cluster=${CLUSTER:-volbackup-e2e}
snapshotter_version=v8.2.0
hostpath_version=v1.15.0
minio_image=quay.io/minio/minio:RELEASE.2025-04-22T22-12-26Z
mc_image=quay.io/minio/mc:RELEASE.2025-04-16T18-13-26Z
image=volbackup:e2e-kind
ns=volbackup-e2e
password=e2e-kind-repository-password
export VOLBACKUP_PASSWORD=$password AWS_ACCESS_KEY_ID=volbackup AWS_SECRET_ACCESS_KEY=volbackup-secret-key
export AWS_DEFAULT_REGION=us-east-1

for tool in docker kind kubectl git cargo; do
  if ! command -v "$tool" >/dev/null; then
    echo "e2e-kind: $tool is missing: this test needs docker, kind, kubectl, git and cargo" >&2
    exit 2
  fi
done
if ! docker info >/dev/null 2>&1; then
  echo "e2e-kind: docker is installed but its daemon does not answer (start it, or check your permissions)" >&2
  exit 2
fi

step() { printf '\n== %s\n' "$*"; }
work=$(mktemp -d)
cleanup() {
  if [ "${KEEP:-}" = 1 ]; then
    echo "e2e-kind: cluster $cluster kept (kind delete cluster --name $cluster)"
  else
    kind delete cluster --name "$cluster" >/dev/null 2>&1 || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

step "kind cluster $cluster"
if ! kind get clusters 2>/dev/null | grep -qx "$cluster"; then
  kind create cluster --name "$cluster" --wait 120s
fi
kubectl config use-context "kind-$cluster" >/dev/null

step "snapshot CRDs and controller (external-snapshotter $snapshotter_version)"
git clone -q --depth 1 --branch "$snapshotter_version" \
  https://github.com/kubernetes-csi/external-snapshotter "$work/external-snapshotter"
kubectl apply -k "$work/external-snapshotter/client/config/crd"
kubectl -n kube-system apply -k "$work/external-snapshotter/deploy/kubernetes/snapshot-controller"
kubectl -n kube-system rollout status deployment/snapshot-controller --timeout=180s

step "csi-driver-host-path $hostpath_version"
git clone -q --depth 1 --branch "$hostpath_version" \
  https://github.com/kubernetes-csi/csi-driver-host-path "$work/csi-driver-host-path"
"$work/csi-driver-host-path/deploy/kubernetes-latest/deploy.sh"
kubectl apply -f "$work/csi-driver-host-path/examples/csi-storageclass.yaml"
kubectl apply -f "$work/csi-driver-host-path/examples/csi-volumesnapshotclass.yaml"
# The quick start relies on defaults: the host-path classes become the cluster's defaults.
kubectl annotate storageclass standard storageclass.kubernetes.io/is-default-class- >/dev/null 2>&1 || true
kubectl annotate --overwrite storageclass csi-hostpath-sc storageclass.kubernetes.io/is-default-class=true
kubectl annotate --overwrite volumesnapshotclass csi-hostpath-snapclass \
  snapshot.storage.kubernetes.io/is-default-class=true

step "an S3 bucket: MinIO in namespace $ns, NodePort 30900"
kubectl create namespace "$ns" --dry-run=client -o yaml | kubectl apply -f -
kubectl -n "$ns" apply -f - <<EOF
apiVersion: apps/v1
kind: Deployment
metadata: {name: minio}
spec:
  selector: {matchLabels: {app: minio}}
  template:
    metadata: {labels: {app: minio}}
    spec:
      containers:
      - name: minio
        image: $minio_image
        args: [server, /data]
        env:
        - {name: MINIO_ROOT_USER, value: $AWS_ACCESS_KEY_ID}
        - {name: MINIO_ROOT_PASSWORD, value: $AWS_SECRET_ACCESS_KEY}
        ports: [{containerPort: 9000}]
        readinessProbe: {httpGet: {path: /minio/health/ready, port: 9000}}
        volumeMounts: [{name: data, mountPath: /data}]
      volumes: [{name: data, emptyDir: {}}]
---
apiVersion: v1
kind: Service
metadata: {name: minio}
spec:
  type: NodePort
  selector: {app: minio}
  ports: [{port: 9000, targetPort: 9000, nodePort: 30900}]
EOF
kubectl -n "$ns" rollout status deployment/minio --timeout=180s
kubectl -n "$ns" delete pod make-bucket --ignore-not-found >/dev/null
kubectl -n "$ns" run make-bucket --restart=Never --image="$mc_image" --command -- sh -c \
  "mc alias set m http://minio:9000 $AWS_ACCESS_KEY_ID $AWS_SECRET_ACCESS_KEY && mc mb -p m/volbackup"
kubectl -n "$ns" wait --for=jsonpath='{.status.phase}'=Succeeded pod/make-bucket --timeout=180s
# The plugin (on this host) and the pods (on the node) reach MinIO at the same address.
node_ip=$(kubectl get node "$cluster-control-plane" -o jsonpath='{.status.addresses[?(@.type=="InternalIP")].address}')
repo="s3:http://$node_ip:30900/volbackup/quickstart"

step "the plugin and its image from this checkout"
cargo build --release -p kubectl-volbackup
export PATH="$PWD/target/release:$PATH"
# The image's binary is built in Debian bookworm, the release base's distribution, so it needs
# no newer glibc than the base has (a binary built here might).
docker run --rm -v "$PWD:/src" -w /src -e CARGO_TARGET_DIR=/src/target/e2e-kind \
  docker.io/library/rust:1-bookworm cargo build --release --locked -p kubectl-volbackup
mkdir -p "$work/image"
cp target/e2e-kind/release/kubectl-volbackup "$work/image/kubectl-volbackup-linux-amd64"
docker build -q -f Containerfile -t "$image" \
  --build-arg BASE=gcr.io/distroless/cc-debian12:nonroot --build-arg VERSION=e2e "$work/image"
kind load docker-image --name "$cluster" "$image"
export VOLBACKUP_IMAGE=$image

step "quick start: doctor, install, repository"
kubectl volbackup install
kubectl volbackup repo init --repo "$repo"

step "quick start: a PVC with data"
kubectl -n "$ns" apply -f - <<'EOF'
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: data}
spec:
  accessModes: [ReadWriteOnce]
  resources: {requests: {storage: 64Mi}}
---
apiVersion: v1
kind: Pod
metadata: {name: writer}
spec:
  restartPolicy: Never
  containers:
  - name: main
    image: busybox:1.36
    command: [sh, -c, "head -c 20000000 /dev/urandom > /data/blob && echo hello > /data/hello.txt && cd /data && md5sum blob hello.txt > /data/SUMS"]
    volumeMounts: [{name: v, mountPath: /data}]
  volumes: [{name: v, persistentVolumeClaim: {claimName: data}}]
EOF
kubectl -n "$ns" wait --for=jsonpath='{.status.phase}'=Succeeded pod/writer --timeout=180s
kubectl -n "$ns" delete pod writer

step "quick start: back up, list, restore"
kubectl volbackup doctor -n "$ns"
created=$(kubectl volbackup create data -n "$ns" --repo "$repo")
echo "$created"
backup=$(echo "$created" | sed -n 's|^volumebackup.volbackup.io/\([^ ]*\) created.*|\1|p')
[ -n "$backup" ] || { echo "e2e-kind: create printed no backup name" >&2; exit 1; }
kubectl volbackup list -n "$ns"
kubectl volbackup describe "$backup" -n "$ns"
kubectl volbackup restore "$backup" --to data-restored -n "$ns" --wait

step "the restored PVC holds the same data"
kubectl -n "$ns" apply -f - <<'EOF'
apiVersion: v1
kind: Pod
metadata: {name: checker}
spec:
  restartPolicy: Never
  containers:
  - name: main
    image: busybox:1.36
    command: [sh, -c, "cd /data && md5sum -c SUMS"]
    volumeMounts: [{name: v, mountPath: /data}]
  volumes: [{name: v, persistentVolumeClaim: {claimName: data-restored}}]
EOF
if ! kubectl -n "$ns" wait --for=jsonpath='{.status.phase}'=Succeeded pod/checker --timeout=180s; then
  kubectl -n "$ns" logs checker || true
  echo "e2e-kind: the restored data differs" >&2
  exit 1
fi
kubectl -n "$ns" logs checker
echo "e2e-kind: the quick start works on kind"
