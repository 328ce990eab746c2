/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Rust (compiled in with RUST_HANDSHAKE): RakNet, Rust's transport since
 * 2014 and its default, or Steam networking (steam.h), which servers
 * started with `-swnet` use (Facepunch's announcement of 2022-11-03, quoted
 * by hosting providers' notes; Facepunch's own client is closed). A rule
 * with this module accepts either handshake.
 *
 * RakNet source: facebookarchive/RakNet, commit 1a16989, Source/:
 *   MessageIdentifiers.h:59-79  ids: 0x01 ID_UNCONNECTED_PING, 0x02 ..._OPEN_
 *     CONNECTIONS, 0x05 ID_OPEN_CONNECTION_REQUEST_1, 0x06 ..._REPLY_1,
 *     0x07 ..._REQUEST_2, 0x08 ..._REPLY_2
 *   RakPeer.cpp:135  OFFLINE_MESSAGE_DATA_ID, the 16-byte magic
 *   RakPeer.cpp:2100-2111  ping: id, time (8: __GET_TIME_64BIT, RakNetDefines.h:23),
 *     magic, GUID (8) = 33 bytes
 *   RakPeer.cpp:5757-5761  request 1: id, magic, protocol, zeros up to the
 *     probed MTU - 28 (UDP_HEADER_SIZE); MTUs 1492, 1200, 576 (:104), sent with
 *     DF (:5781): 1464, 1172 or 548 bytes
 *   RakPeer.cpp:4757-4853  request 2 (no security, the default build:
 *     LIBCAT_SECURITY 0, NativeFeatureIncludes.h:54): id, magic, binding
 *     address (IPv4: version 4, address, port = 7, BitStream.h:1142-1154),
 *     MTU (2), GUID (8) = 34 bytes
 *   RakPeer.cpp:5300-5304  reply 2: id, magic, server GUID, the client's
 *     address as the server saw it (version 4, ~address, port, both in
 *     network order), MTU, doSecurity (one bit, MSB first) = 35 bytes
 *   RakPeer.cpp:5198-5342  reply 2 is the answer to request 2 that
 *     allocates the connection slot (AssignSystemAddressToRemoteSystemList).
 * What reply 2 proves: without RakNet's security option there is no cookie
 * and no server nonce, so an off-path spoofer can make the server answer
 * reply 2 to an address it does not own. Reply 2 then validates an address
 * for which the server allocated a connection, which the server's own
 * limits (incoming connections, per-IP frequency) bound; the other checks
 * here (well-formed offline messages only, the budget, the address inside
 * reply 2 equal to the packet's destination) are what a POP can add.
 * Request/reply 2 with security (cookie, public key) are not accepted.
 * tests/bpf/game_fixtures.py RAKNET_CAPTURE, a connection between two real
 * RakNet peers (raknet-python 0.3.0), has exactly these sizes and layouts.
 */
#ifndef BIFROST_XDP_MODULE_RUST_H
#define BIFROST_XDP_MODULE_RUST_H

#include "game_clients.h"
#include "steam.h"

#define BFX_RAKNET_PING 0x01
#define BFX_RAKNET_PING_OPEN 0x02
#define BFX_RAKNET_OCR1 0x05
#define BFX_RAKNET_OCR2 0x07
#define BFX_RAKNET_OCREPLY2 0x08
/* OFFLINE_MESSAGE_DATA_ID as two little-endian words. */
#define BFX_RAKNET_MAGIC0 0xfefefefe00ffff00ULL	/* 00 FF FF 00 FE FE FE FE */
#define BFX_RAKNET_MAGIC1 0x78563412fdfdfdfdULL	/* FD FD FD FD 12 34 56 78 */
#define BFX_RAKNET_PING_LEN 33
#define BFX_RAKNET_OCR2_LEN 34
#define BFX_RAKNET_OCREPLY2_LEN 35
/* A connected datagram: the isValid bit, a datagram number (uint24), at most the MTU. */
#define BFX_RAKNET_DATAGRAM_MIN 4
#define BFX_RAKNET_DATAGRAM_MAX (1492 - 28)

static __always_inline int bfx_raknet_magic_at(const __u8 *p, __u32 off, void *data_end)
{
	if (!BFX_HAVE(p + off, 16, data_end))
		return 0;
	return *(const __u64 *)(p + off) == BFX_RAKNET_MAGIC0 &&
	       *(const __u64 *)(p + off + 8) == BFX_RAKNET_MAGIC1;
}

/* 1: a well-formed RakNet offline message a client sends before it connects. */
static __always_inline int bfx_raknet_handshake(const struct bfx_l4 *l4, void *data_end)
{
	const __u8 *p = l4->payload;
	__u32 len = l4->payload_len;

	if (!BFX_HAVE(p, 1, data_end))
		return 0;
	switch (p[0]) {
	case BFX_RAKNET_PING:
	case BFX_RAKNET_PING_OPEN:
		return len == BFX_RAKNET_PING_LEN && bfx_raknet_magic_at(p, 9, data_end);
	case BFX_RAKNET_OCR1:
		/* Exactly one of the MTU probes; the zero padding is not read (up to 1446 bytes). */
		if (len != 1492 - 28 && len != 1200 - 28 && len != 576 - 28)
			return 0;
		return bfx_raknet_magic_at(p, 1, data_end);
	case BFX_RAKNET_OCR2:
		if (len != BFX_RAKNET_OCR2_LEN || !BFX_HAVE(p, BFX_RAKNET_OCR2_LEN, data_end))
			return 0;
		return p[17] == 4 && bfx_raknet_magic_at(p, 1, data_end);
	}
	return 0;
}

/*
 * 1: a connected datagram (ReliabilityLayer.cpp's DatagramHeaderFormat: the
 * isValid bit 0x80, then flags and the datagram number), which a peer sends
 * only to a system in its remoteSystemList (RakPeer.cpp: offline messages are
 * the ones below 0x80).
 */
static __always_inline int bfx_raknet_datagram(const struct bfx_l4 *l4, void *data_end)
{
	const __u8 *p = l4->payload;
	__u32 len = l4->payload_len;

	if (len < BFX_RAKNET_DATAGRAM_MIN || len > BFX_RAKNET_DATAGRAM_MAX ||
	    !BFX_HAVE(p, BFX_RAKNET_DATAGRAM_MIN, data_end))
		return 0;
	return (p[0] & 0x80) && *(const __u32 *)p != BFX_CONNECTIONLESS;
}

/* 1: open connection reply 2 (no security) to exactly the packet's destination. */
static __always_inline int bfx_raknet_reply2(const struct bfx_inner *in, const struct bfx_l4 *l4,
					     void *data_end)
{
	const __u8 *p = l4->payload;

	if (l4->payload_len != BFX_RAKNET_OCREPLY2_LEN ||
	    !BFX_HAVE(p, BFX_RAKNET_OCREPLY2_LEN, data_end))
		return 0;
	if (p[0] != BFX_RAKNET_OCREPLY2 || !bfx_raknet_magic_at(p, 1, data_end))
		return 0;
	/* The address written at 25 is the client's, the address the reply goes to. */
	if (p[25] != 4 || *(const __u32 *)(p + 26) != ~in->daddr ||
	    *(const __u16 *)(p + 30) != l4->dport)
		return 0;
	return !(p[34] & 0x80);	/* doSecurity off */
}

static __always_inline int bfx_rust_forward(const struct iphdr *ip, const struct bfx_l4 *l4,
					    void *data_end, const struct bfx_settings *s,
					    __u32 rule_id, struct bfx_srcds_state **own)
{
	/* A2S queries as in bfx_steam_forward: Rust answers them too (-queryport or game port). */
	if (bfx_game_validated(ip, l4, s, own) ||
	    bfx_is_a2s_query(l4->payload, l4->payload_len, data_end))
		return 1;
	/* A handshake, or session data of a client whose route moved here (game_clients.h). */
	if (!bfx_raknet_handshake(l4, data_end) && !bfx_steam_handshake(l4, data_end) &&
	    !bfx_raknet_datagram(l4, data_end) && !bfx_steam_data(l4, data_end))
		return 0;
	return bfx_game_budget_ok(rule_id, s);
}

static __always_inline void bfx_rust_return(const struct bfx_inner *in, const struct bfx_l4 *l4,
					    void *data_end, const struct bfx_settings *s)
{
	/* Both transports' data have 0x80 set: one check covers RakNet's and Steam's. */
	if (bfx_raknet_datagram(l4, data_end))
		bfx_game_session(in, l4, s);
	else if (bfx_raknet_reply2(in, l4, data_end) || bfx_steam_connect_ok(l4, data_end))
		bfx_game_validate(in, l4, s);
}

#endif /* BIFROST_XDP_MODULE_RUST_H */
