"""A2S answers per second: bifrost_nf (kernel) vs a Python user-space cache, same logic.

Runs in the guest. Topology: client --veth-- POP. The POP serves the same
cached A2S_INFO answer from bifrost_nf (10.71.0.1:27015) and from
bifrost_testing.usercache (10.71.0.1:27016), both with the stateless challenge.
A small C generator (sendmmsg) floods each with challenged queries for a few
seconds, alternating kernel / user space; answers are counted on the client's
interface. Then unchallenged queries measure bytes out / bytes in for an
unverified source. Goals: kernel >= 5x user space; bytes out / in <= 1.0.
"""

from __future__ import annotations

import json
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bifrost import netns
from bifrost.bifrost_nf import a2s
from bifrost.bifrost_nf.nf import CacheDevice

WHERE = "guest"
CLIENT_IP, POP_IP = "10.71.0.2", "10.71.0.1"
KERNEL_PORT, USER_PORT = 27015, 27016
ROUNDS = 3
SECONDS = 2.0

FLOOD_C = r"""
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

/* flood SRC_IP SRC_PORT DST_IP DST_PORT SECONDS HEXPAYLOAD: prints packets sent */
int main(int argc, char **argv)
{
	unsigned char payload[1500];
	struct sockaddr_in src = { .sin_family = AF_INET }, dst = { .sin_family = AF_INET };
	struct mmsghdr msgs[64];
	struct iovec iov;
	struct timespec t0, t;
	size_t len = strlen(argv[6]) / 2, i;
	long sent = 0;
	int one = 1, fd;

	if (argc != 7)
		return 2;
	for (i = 0; i < len; i++)
		sscanf(argv[6] + 2 * i, "%2hhx", &payload[i]);
	fd = socket(AF_INET, SOCK_DGRAM, 0);
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	inet_pton(AF_INET, argv[1], &src.sin_addr);
	src.sin_port = htons(atoi(argv[2]));
	inet_pton(AF_INET, argv[3], &dst.sin_addr);
	dst.sin_port = htons(atoi(argv[4]));
	if (bind(fd, (void *)&src, sizeof(src)) || connect(fd, (void *)&dst, sizeof(dst)))
		return 3;
	iov.iov_base = payload;
	iov.iov_len = len;
	memset(msgs, 0, sizeof(msgs));
	for (i = 0; i < 64; i++) {
		msgs[i].msg_hdr.msg_iov = &iov;
		msgs[i].msg_hdr.msg_iovlen = 1;
	}
	clock_gettime(CLOCK_MONOTONIC, &t0);
	do {
		int n = sendmmsg(fd, msgs, 64, 0);

		if (n > 0)
			sent += n;
		clock_gettime(CLOCK_MONOTONIC, &t);
	} while ((t.tv_sec - t0.tv_sec) + (t.tv_nsec - t0.tv_nsec) / 1e9 < atof(argv[5]));
	printf("%ld\n", sent);
	return 0;
}
"""


def build_flood(workdir: Path) -> Path:
    src = workdir / "flood.c"
    exe = workdir / "flood"
    src.write_text(FLOOD_C)
    subprocess.run(["gcc", "-O2", "-o", str(exe), str(src)], check=True)
    return exe


def link_stats(ns: netns.Namespace, ifname: str) -> tuple[int, int, int, int]:
    """(rx_packets, rx_bytes, tx_packets, tx_bytes) of an interface in ns."""
    with ns.ipr() as ipr:
        link = ipr.get_links(ifname=ifname)[0]
    s = link.get_attr("IFLA_STATS64")
    return s["rx_packets"], s["rx_bytes"], s["tx_packets"], s["tx_bytes"]


def get_challenge(client: netns.Namespace, port: int, sport: int) -> int:
    s = client.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((CLIENT_IP, sport))
    s.settimeout(5)
    try:
        s.sendto(a2s.request("info"), (POP_IP, port))
        chal = a2s.parse_challenge(s.recv(64))
    finally:
        s.close()
    if chal is None:
        raise RuntimeError(f"no challenge from port {port}")
    return chal


def flood(client: netns.Namespace, exe: Path, port: int, sport: int, payload: bytes,
          seconds: float) -> tuple[float, float, int, int, int, int]:  # fmt: skip
    """Offered/s, answered/s and the client interface byte/packet deltas."""
    before = link_stats(client, "eth0")
    done = client.run([str(exe), CLIENT_IP, str(sport), POP_IP, str(port), str(seconds),
                       payload.hex()], timeout=seconds + 60)  # fmt: skip
    time.sleep(0.3)  # let the last answers arrive
    after = link_stats(client, "eth0")
    sent = int(done.stdout.strip())
    rx_p, rx_b, tx_p, tx_b = (a - b for a, b in zip(after, before, strict=True))
    return sent / seconds, rx_p / seconds, rx_p, rx_b, tx_p, tx_b


def main() -> int:
    subprocess.run(["modprobe", "-a", "veth", "bifrost_nf"], check=True)
    client = netns.Namespace("bench-client")
    pop = netns.Namespace("bench-pop")
    user = None
    work = Path(tempfile.mkdtemp(prefix="bench-cache-"))
    try:
        netns.link(client, "eth0", f"{CLIENT_IP}/24", pop, "c0", f"{POP_IP}/24")
        exe = build_flood(work)
        info = a2s.build_info(a2s.Info("Bench server", "de_dust2", "csgo", "CS", app_id=730,
                                       players=10, max_players=32, port=KERNEL_PORT,
                                       keywords="bench"))  # fmt: skip
        with pop.entered():
            dev = CacheDevice()
        dev.configure(rate_pps=0, rate_burst=1, rotate_s=3600)  # the user cache has no limit
        dev.set_service(POP_IP, KERNEL_PORT)
        dev.set_answer(POP_IP, KERNEL_PORT, "info", [info], ttl_ms=3_600_000, max_stale_ms=0)
        answers = work / "answers.json"
        answers.write_text(json.dumps({"info": [info.hex()]}))
        user = pop.popen([sys.executable, "-m", "bifrost_testing.usercache", "--bind",
                          f"{POP_IP}:{USER_PORT}", "--answers", str(answers)],
                         stdout=subprocess.PIPE)  # fmt: skip
        assert user.stdout is not None
        if user.stdout.readline().strip() != b"ready":
            raise RuntimeError("usercache did not start")

        targets = {"bifrost_nf": (KERNEL_PORT, 40001), "user-space": (USER_PORT, 40002)}
        queries = {
            name: a2s.request("info", get_challenge(client, port, sport))
            for name, (port, sport) in targets.items()
        }
        rates: dict[str, list[float]] = {n: [] for n in targets}
        offered: dict[str, list[float]] = {n: [] for n in targets}
        for _ in range(ROUNDS):
            for name, (port, sport) in targets.items():  # A B A B ...
                off, ans, *_ = flood(client, exe, port, sport, queries[name], SECONDS)
                offered[name].append(off)
                rates[name].append(ans)

        # unverified source: unchallenged queries only ever get the 9-byte challenge
        before = dev.counters()
        wire: dict[str, float] = {}
        for name, (port, sport) in targets.items():
            _, _, _, rx_b, _, tx_b = flood(client, exe, port, sport + 100, a2s.request("info"), 1.0)
            wire[name] = rx_b / tx_b if tx_b else float("nan")
        after = dev.counters()
        k_in = after["unverified_bytes_in"] - before["unverified_bytes_in"]
        k_out = after["unverified_bytes_out"] - before["unverified_bytes_out"]
        dev.configure(rate_pps=20, rate_burst=40, rotate_s=60)
        dev.close()

        med = {n: statistics.median(v) for n, v in rates.items()}
        med_off = {n: statistics.median(v) for n, v in offered.items()}
        ratio = med["bifrost_nf"] / med["user-space"] if med["user-space"] else float("inf")
        print(f"A2S_INFO answers/s, {ROUNDS} alternating rounds of {SECONDS:.0f}s "
              f"(TCG guest: absolute figures are for reference only)")  # fmt: skip
        print(f"{'path':<12} {'offered/s':>10} {'answered/s':>11}  rounds")
        for n in targets:
            print(
                f"{n:<12} {med_off[n]:>10.0f} {med[n]:>11.0f}  "
                + " ".join(f"{r:.0f}" for r in rates[n])
            )
        kernel_kept_up = med["bifrost_nf"] >= 0.95 * med_off["bifrost_nf"]
        print(f"ratio bifrost_nf / user-space: {ratio:.1f}x (goal >= 5x) "
              f"{'MET' if ratio >= 5 else 'MISSED'}"
              + (" - a lower bound: the kernel answered all the generator offered"
                 if kernel_kept_up else ""))  # fmt: skip
        k_ratio = k_out / k_in if k_in else float("nan")
        print(
            f"unverified bytes out / in: bifrost_nf payload {k_ratio:.2f} ({k_out}/{k_in}), "
            f"wire {wire['bifrost_nf']:.2f}; user-space wire {wire['user-space']:.2f} "
            f"(goal <= 1.0) {'MET' if k_ratio <= 1.0 and wire['bifrost_nf'] <= 1.0 else 'MISSED'}"
        )
        return 0
    finally:
        if user and user.poll() is None:
            user.terminate()
            user.wait(timeout=10)
        client.close()
        pop.close()


if __name__ == "__main__":
    sys.exit(main())
