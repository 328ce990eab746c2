/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Steam networking over direct UDP (compiled in with STEAM_HANDSHAKE; the
 * Rust module uses the checks too). CS2 and Rust (`-swnet`) servers speak it.
 *
 * Source: ValveSoftware/GameNetworkingSockets (the open-source form of the
 * Steamworks ISteamNetworkingSockets), commit e707b3a:
 *   src/common/steamnetworkingsockets_messages_udp.proto:20-25  message ids:
 *     32 ChallengeRequest (client), 33 ChallengeReply (server),
 *     34 ConnectRequest (client), 35 ConnectOK (server),
 *     36 ConnectionClosed, 37 NoConnection (either side)
 *   clientlib/steamnetworkingsockets_udp.h:19-26  padded messages: id (u8),
 *     protobuf length (u16 LE), protobuf, zero padding to at least 512 bytes
 *   clientlib/steamnetworkingsockets_udp.h:28-40  data packets: flags byte
 *     with 0x80 set (steamnetworkingsockets_udp.cpp:548), connection id (4),
 *     seq (2): 7 bytes at least; sent only on a connection
 *   steamnetworkingsockets_internal.h:266  no message over 1300 bytes
 *   clientlib/steamnetworkingsockets_udp.cpp:181-245 (ReceivedFromUnknownHost):
 *     what a server accepts from an address with no connection: >= 5 bytes;
 *     ChallengeRequest and ConnectionClosed padded (ParsePaddedPacket,
 *     :55-75: >= 512 bytes, 0 < length <= packet - 3), ConnectRequest as
 *     id + protobuf, NoConnection; a data packet (0x80) is ignored.
 *   :250-262, :301-320  the ChallengeReply's challenge is a SipHash of the
 *     client's address and a time under the server's secret; a
 *     ConnectRequest without the right one is dropped ("Could be spoofed")
 *     before a connection exists, and ConnectOK (:1775-1821) is sent only
 *     on a connection so made. So ConnectOK proves the client's address.
 * Protobuf fields are serialized in field-number order, so a client's
 * ChallengeRequest starts with connection_id (field 1, fixed32: tag 0x0d;
 * the server refuses a request without it, :265) and its ConnectRequest
 * with client_connection_id (tag 0x0d) then challenge (field 2, fixed64:
 * tag 0x11); ConnectOK starts with client_connection_id (tag 0x0d) and
 * NoConnection with from_connection_id (field 2, fixed32: tag 0x15).
 */
#ifndef BIFROST_XDP_MODULE_STEAM_H
#define BIFROST_XDP_MODULE_STEAM_H

#include "game_clients.h"

#define BFX_STEAM_CHALLENGE_REQUEST 32
#define BFX_STEAM_CONNECT_REQUEST 34
#define BFX_STEAM_CONNECT_OK 35
#define BFX_STEAM_CONNECTION_CLOSED 36
#define BFX_STEAM_NO_CONNECTION 37
#define BFX_STEAM_MIN_PADDED 512	/* k_cbSteamNetworkingMinPaddedPacketSize */
#define BFX_STEAM_MAX_MSG 1300		/* k_cbSteamNetworkingSocketsMaxUDPMsgLen */
#define BFX_PB_FIXED32_1 0x0d		/* protobuf tag: field 1, wire type 5 */
#define BFX_PB_FIXED64_2 0x11		/* field 2, wire type 1 */
#define BFX_PB_FIXED32_2 0x15		/* field 2, wire type 5 */

/* A padded message (udp.h:22-26): its protobuf length fits, as ParsePaddedPacket asks. */
static __always_inline int bfx_steam_padded(const __u8 *p, __u32 len, void *data_end)
{
	__u32 msg_len;

	if (len < BFX_STEAM_MIN_PADDED || len > BFX_STEAM_MAX_MSG || !BFX_HAVE(p, 4, data_end))
		return 0;
	msg_len = p[1] | (__u32)p[2] << 8;
	return msg_len > 0 && msg_len + 3 <= len;
}

/* 1: a well-formed packet a client with no connection yet sends (see the list above). */
static __always_inline int bfx_steam_handshake(const struct bfx_l4 *l4, void *data_end)
{
	const __u8 *p = l4->payload;
	__u32 len = l4->payload_len;

	if (len < 5 || !BFX_HAVE(p, 5, data_end))
		return 0;
	switch (p[0]) {
	case BFX_STEAM_CHALLENGE_REQUEST:
		return bfx_steam_padded(p, len, data_end) && p[3] == BFX_PB_FIXED32_1;
	case BFX_STEAM_CONNECT_REQUEST:
		/* id, client_connection_id (1 + 4), challenge (1 + 8) at least. */
		if (len < 15 || len > BFX_STEAM_MAX_MSG || !BFX_HAVE(p, 7, data_end))
			return 0;
		return p[1] == BFX_PB_FIXED32_1 && p[6] == BFX_PB_FIXED64_2;
	case BFX_STEAM_CONNECTION_CLOSED:
		return bfx_steam_padded(p, len, data_end);
	case BFX_STEAM_NO_CONNECTION:
		/* id, from_connection_id, optionally to_connection_id: SendMsg, not padded. */
		return len >= 6 && len <= 11 && p[1] == BFX_PB_FIXED32_2;
	}
	return 0;
}

/* 1: a data packet (udp.h:28-40), not a Source connectionless one (udp.cpp:195-200). */
static __always_inline int bfx_steam_data(const struct bfx_l4 *l4, void *data_end)
{
	const __u8 *p = l4->payload;
	__u32 len = l4->payload_len;

	if (len < 7 || len > BFX_STEAM_MAX_MSG || !BFX_HAVE(p, 7, data_end))
		return 0;
	return (p[0] & 0x80) && *(const __u32 *)p != BFX_CONNECTIONLESS;
}

/* 1: the server's ConnectOK (sent by SendMsg: id + protobuf, not padded). */
static __always_inline int bfx_steam_connect_ok(const struct bfx_l4 *l4, void *data_end)
{
	const __u8 *p = l4->payload;
	__u32 len = l4->payload_len;

	if (len < 6 || len > BFX_STEAM_MAX_MSG || !BFX_HAVE(p, 2, data_end))
		return 0;
	return p[0] == BFX_STEAM_CONNECT_OK && p[1] == BFX_PB_FIXED32_1;
}

/*
 * Forward path (UDP only): 1 = let it through. A well-formed A2S query
 * (exact sizes, parsing.h) passes as it does without a module: a Steam game
 * server answers them on its game port (the Steamworks game server API's
 * shared socket), the server browser sends them unvalidated, and they go to
 * bifrost_nf's challenge-first cache on a caching rule.
 */
static __always_inline int bfx_steam_forward(const struct iphdr *ip, const struct bfx_l4 *l4,
					     void *data_end, const struct bfx_settings *s,
					     __u32 rule_id, struct bfx_srcds_state **own)
{
	/* A validated client's game traffic first: that is nearly every packet. */
	if (bfx_game_validated(ip, l4, s, own) ||
	    bfx_is_a2s_query(l4->payload, l4->payload_len, data_end))
		return 1;
	/* A handshake, or a data packet of a client whose route moved here (game_clients.h). */
	if (!bfx_steam_handshake(l4, data_end) && !bfx_steam_data(l4, data_end))
		return 0;
	return bfx_game_budget_ok(rule_id, s);
}

/* Return path (UDP only): ConnectOK, or session data, validates the client it goes to. */
static __always_inline void bfx_steam_return(const struct bfx_inner *in, const struct bfx_l4 *l4,
					     void *data_end, const struct bfx_settings *s)
{
	if (bfx_steam_data(l4, data_end))
		bfx_game_session(in, l4, s);
	else if (bfx_steam_connect_ok(l4, data_end))
		bfx_game_validate(in, l4, s);
}

#endif /* BIFROST_XDP_MODULE_STEAM_H */
