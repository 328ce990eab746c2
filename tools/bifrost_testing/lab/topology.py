"""The lab's network: client, two POPs and a game server, each in its own netns.

::

                     10.0.1.0/24                        10.9.1.0/24
              to-pop1 .2 ------- .1 to-client [pop1] to-gs .1 ------- .2 to-pop1
    [client]                                                                     [gameserver]
              to-pop2 .2 ------- .1 to-client [pop2] to-gs .1 ------- .2 to-pop2   lo: 198.51.100.10
                     10.0.2.0/24                        10.9.2.0/24              UDP :27015 (game)

The game service 198.51.100.10:27015 sits behind both POPs (the anycast
address). The client routes it through pop1 (pop2 is the second way in, for
"reply through the POP the client came by" checks); each POP forwards to the
game server over its own link, and the game server routes each client
network back through the POP on that side. That is plain routing; each
component's lab step (bifrost.<comp>.lab.run) adds its part on top.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from bifrost.netns import Namespace, link

SERVICE_IP = ipaddress.IPv4Address("198.51.100.10")
SERVICE_PORT = 27015
CLIENT_POP1_IP = ipaddress.IPv4Address("10.0.1.2")
CLIENT_POP2_IP = ipaddress.IPv4Address("10.0.2.2")
POP1_CLIENT_IP = ipaddress.IPv4Address("10.0.1.1")
POP2_CLIENT_IP = ipaddress.IPv4Address("10.0.2.1")
POP1_GS_IP = ipaddress.IPv4Address("10.9.1.1")
POP2_GS_IP = ipaddress.IPv4Address("10.9.2.1")
GS_POP1_IP = ipaddress.IPv4Address("10.9.1.2")
GS_POP2_IP = ipaddress.IPv4Address("10.9.2.2")


@dataclass
class Topology:
    """The namespaces and every address, as attributes for the component labs."""

    client: Namespace
    pop1: Namespace
    pop2: Namespace
    gameserver: Namespace
    service_ip: ipaddress.IPv4Address = SERVICE_IP
    service_port: int = SERVICE_PORT
    # <namespace>_<peer>_ip: the address of <namespace> on its link to <peer>.
    client_pop1_ip: ipaddress.IPv4Address = CLIENT_POP1_IP
    client_pop2_ip: ipaddress.IPv4Address = CLIENT_POP2_IP
    pop1_client_ip: ipaddress.IPv4Address = POP1_CLIENT_IP
    pop2_client_ip: ipaddress.IPv4Address = POP2_CLIENT_IP
    pop1_gs_ip: ipaddress.IPv4Address = POP1_GS_IP
    pop2_gs_ip: ipaddress.IPv4Address = POP2_GS_IP
    gs_pop1_ip: ipaddress.IPv4Address = GS_POP1_IP
    gs_pop2_ip: ipaddress.IPv4Address = GS_POP2_IP
    # (namespace, ifname, cidr, peer namespace, peer ifname, peer cidr), for printing.
    links: list[tuple[str, str, str, str, str, str]] = field(default_factory=list)

    @property
    def namespaces(self) -> dict[str, Namespace]:
        return {
            "client": self.client,
            "pop1": self.pop1,
            "pop2": self.pop2,
            "gameserver": self.gameserver,
        }

    def close(self) -> None:
        for ns in self.namespaces.values():
            ns.close()


def _wire(topo: Topology, a: str, a_if: str, a_cidr: str, b: str, b_if: str, b_cidr: str) -> None:
    link(topo.namespaces[a], a_if, a_cidr, topo.namespaces[b], b_if, b_cidr)
    topo.links.append((a, a_if, a_cidr, b, b_if, b_cidr))


def build() -> Topology:
    """Create and wire the four namespaces; on failure remove what was made."""
    made: list[Namespace] = []
    try:
        for role in ("client", "pop1", "pop2", "gs"):
            made.append(Namespace(f"lab-{role}"))
        topo = Topology(*made)
        _wire(topo, "client", "to-pop1", "10.0.1.2/24", "pop1", "to-client", "10.0.1.1/24")
        _wire(topo, "client", "to-pop2", "10.0.2.2/24", "pop2", "to-client", "10.0.2.1/24")
        _wire(topo, "pop1", "to-gs", "10.9.1.1/24", "gameserver", "to-pop1", "10.9.1.2/24")
        _wire(topo, "pop2", "to-gs", "10.9.2.1/24", "gameserver", "to-pop2", "10.9.2.2/24")
        topo.gameserver.address("lo", f"{SERVICE_IP}/32")
        for pop, gs_ip in ((topo.pop1, topo.gs_pop1_ip), (topo.pop2, topo.gs_pop2_ip)):
            pop.sysctl("net.ipv4.ip_forward", "1")
            pop.route(f"{SERVICE_IP}/32", gateway=str(gs_ip))
        for ns in topo.namespaces.values():
            ns.sysctl("net.ipv4.conf.all.rp_filter", "0")
        # The client reaches the anycast service by pop1; the game server
        # answers each client network through the POP on that side.
        topo.client.route(f"{SERVICE_IP}/32", gateway=str(topo.pop1_client_ip))
        topo.gameserver.route("10.0.1.0/24", gateway=str(topo.pop1_gs_ip))
        topo.gameserver.route("10.0.2.0/24", gateway=str(topo.pop2_gs_ip))
        return topo
    except BaseException:
        for ns in made:
            ns.close()
        raise
