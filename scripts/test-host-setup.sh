#!/usr/bin/env bash
# Prepares this machine for the deploy and monitoring tests (idempotent): promtool (Debian's
# prometheus package) for the alert rule tests, podman configured for these hosts (runc,
# cgroupfs, explicit ulimits: see CONTRIBUTING.md), and two local images, built from the Debian
# mirror this host's apt uses (or DEBIAN_MIRROR), since no image registry is assumed:
#   localdebian:bookworm          debootstrap'd minimal Debian 12
#   levity-test-systemd:bookworm  a "fresh Debian host" with systemd as PID 1
# Without root or apt it prints why and exits 0: the deploy tests then skip with that reason.
set -euo pipefail

if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    echo "test-host-setup: not root or no apt-get; deploy tests will be skipped" >&2
    exit 0
fi

need=()
for cmd in podman runc conmon debootstrap docker-compose slirp4netns fuse-overlayfs promtool; do
    command -v "$cmd" >/dev/null || need+=("$cmd")
done
if [ ${#need[@]} -gt 0 ]; then
    echo "test-host-setup: installing podman, debootstrap and promtool (missing: ${need[*]})" >&2
    apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        podman runc conmon netavark aardvark-dns fuse-overlayfs slirp4netns uidmap iptables \
        debootstrap docker-compose ca-certificates prometheus >/dev/null
fi

# The Debian archive this host's apt already uses: its main component, e.g. "500
# http://mirror/debian bookworm/main amd64 Packages" in `apt-cache policy`.
debian_mirror() {
    if [ -n "${DEBIAN_MIRROR:-}" ]; then
        echo "$DEBIAN_MIRROR"
        return
    fi
    apt-cache policy 2>/dev/null | awk '$3 ~ /^[a-z]+\/main$/ && $2 ~ /^(https?|file):/ { print $2; exit }'
}

mkdir -p /etc/containers
conf=/etc/containers/containers.conf
if ! grep -q 'levity-test-host-setup' "$conf" 2>/dev/null; then
    cat > "$conf" <<'CONF'
# levity-test-host-setup: crun fails on hybrid cgroups; rlimits cannot be raised here.
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
CONF
fi

if ! podman image exists localdebian:bookworm; then
    mirror=$(debian_mirror)
    if [ -z "$mirror" ]; then
        echo "test-host-setup: no Debian archive in apt's configuration; set DEBIAN_MIRROR" >&2
        exit 1
    fi
    rootfs=$(mktemp -d /var/tmp/levity-rootfs.XXXXXX)  # 200 MB: not a tmpfs /tmp
    echo "test-host-setup: debootstrap bookworm from $mirror into $rootfs" >&2
    debootstrap --variant=minbase bookworm "$rootfs" "$mirror" >/dev/null
    tar -C "$rootfs" -c . | podman import - localdebian:bookworm >/dev/null
    rm -rf "$rootfs"
fi

if ! podman image exists levity-test-systemd:bookworm; then
    echo "test-host-setup: building levity-test-systemd:bookworm" >&2
    podman build -q -t levity-test-systemd:bookworm -f tests/containers/systemd-host.Containerfile tests/containers >/dev/null
fi
echo "test-host-setup: ready" >&2
