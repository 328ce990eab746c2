/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Unreal Engine (compiled in with UE3_HANDSHAKE, config name "ue3"): the
 * UE4 stateless handshake (StatelessConnectHandlerComponent), "original"
 * version, without a PacketHandler magic header (the default).
 *
 * Epic's source is not publicly reachable here (EpicGames/UnrealEngine needs
 * an Epic account link); what this follows is public:
 *   dpull/utcp, utcp_handshake.c and utcp_handshake.h: an open-source
 *     reimplementation of UE 4.26's handshake, function by function
 *     (SendConnectChallenge, SendChallengeAck, ParseHandshakePacket,
 *     NotifyHandshakeBegin), with HANDSHAKE_PACKET_SIZE_BITS 227,
 *     RESTART_HANDSHAKE_PACKET_SIZE_BITS 2, RESTART_RESPONSE_SIZE_BITS 387,
 *     COOKIE_BYTE_SIZE 20, and GenerateCookie: an HMAC-SHA1 of the
 *     timestamp and the client's address under a rotating server secret.
 * Every packet is a bit stream written LSB first, closed by a termination
 * bit (1) and zero padding to a byte (UNetConnection does the same for all
 * traffic, so a UE packet never ends in a zero byte). Handshake packets:
 *   bit 0 handshake (1), bit 1 restart, bit 2 secret id, bits 3..66 the
 *   timestamp (a double), bits 67..226 the cookie, [restart response:
 *   bits 227..386 the original cookie], then the termination bit:
 *   227 + 1 bits = 29 bytes, 387 + 1 bits = 49 bytes, with the last byte
 *   0000 1xxx. The client sends the 29-byte connect (zero-filled) and
 *   challenge response, or the 49-byte restart response; the server sends
 *   the challenge (timestamp > 0), the 1-byte restart request, and, only
 *   after the cookie in the client's response matched (the address is
 *   proven), the challenge ack: 29 bytes, timestamp exactly -1.0.
 * Not verified: UE5's later handshake versions (a version byte, random
 * padding: other sizes; they are dropped here) and UE3, whose netcode is
 * not public and has no stateless handshake: a UE3 client is never
 * validated by this module, so use it for UE4 servers only.
 */
#ifndef BIFROST_XDP_MODULE_UE_H
#define BIFROST_XDP_MODULE_UE_H

#include "game_clients.h"

#define BFX_UE_HANDSHAKE_LEN 29		/* (227 + 1 + 7) / 8 */
#define BFX_UE_RESTART_RESPONSE_LEN 49	/* (387 + 1 + 7) / 8 */
#define BFX_UE_ACK_TIMESTAMP 0xbff0000000000000ULL	/* -1.0 */

/* Handshake bit set, and the last byte holds the termination bit at bit 3 (227 % 8, 387 % 8). */
static __always_inline int bfx_ue_shape(const __u8 *p, __u32 len, void *data_end)
{
	if (len == BFX_UE_HANDSHAKE_LEN) {
		if (!BFX_HAVE(p, BFX_UE_HANDSHAKE_LEN, data_end))
			return 0;
		return (p[0] & 1) && (p[BFX_UE_HANDSHAKE_LEN - 1] & 0xf8) == 0x08;
	}
	if (len == BFX_UE_RESTART_RESPONSE_LEN) {
		if (!BFX_HAVE(p, BFX_UE_RESTART_RESPONSE_LEN, data_end))
			return 0;
		return (p[0] & 1) && (p[BFX_UE_RESTART_RESPONSE_LEN - 1] & 0xf8) == 0x08;
	}
	return 0;
}

/* Largest UE packet taken as game data (UE's MaxPacket defaults are below 1500 - 28). */
#define BFX_UE_MAX_PACKET 1472

/*
 * 1: a game (non-handshake) packet: handshake bit 0 and a termination bit in
 * the last byte. A server sends these only on a connection (UNetConnection);
 * to an unknown address it answers with a restart request, a handshake packet.
 */
static __always_inline int bfx_ue_data(const struct bfx_l4 *l4, void *data_end)
{
	const __u8 *p = l4->payload;
	__u32 len = l4->payload_len;
	const __u8 *last;

	if (len < 2 || len > BFX_UE_MAX_PACKET || !BFX_HAVE(p, 1, data_end) || (p[0] & 1))
		return 0;
	last = p + ((len - 1) & 0x7ff);
	if (!BFX_HAVE(last, 1, data_end))
		return 0;
	return *last != 0;
}

/* The server's challenge ack: a 29-byte handshake packet whose timestamp is -1.0. */
static __always_inline int bfx_ue_challenge_ack(const struct bfx_l4 *l4, void *data_end)
{
	const __u8 *p = l4->payload;
	__u64 ts;

	if (l4->payload_len != BFX_UE_HANDSHAKE_LEN || !bfx_ue_shape(p, BFX_UE_HANDSHAKE_LEN, data_end))
		return 0;
	/* The 64 bits from bit 3: bytes 0..7 shifted down 3, then the low 3 bits of byte 8. */
	ts = (*(const __u64 *)p >> 3) | ((__u64)(p[8] & 7) << 61);
	return ts == BFX_UE_ACK_TIMESTAMP;
}

static __always_inline int bfx_ue_forward(const struct iphdr *ip, const struct bfx_l4 *l4,
					  void *data_end, const struct bfx_settings *s,
					  __u32 rule_id, struct bfx_srcds_state **own)
{
	if (bfx_game_validated(ip, l4, s, own))
		return 1;
	/* A handshake, or game data of a client whose route moved here (game_clients.h). */
	if (!bfx_ue_shape(l4->payload, l4->payload_len, data_end) && !bfx_ue_data(l4, data_end))
		return 0;
	return bfx_game_budget_ok(rule_id, s);
}

static __always_inline void bfx_ue_return(const struct bfx_inner *in, const struct bfx_l4 *l4,
					  void *data_end, const struct bfx_settings *s)
{
	if (bfx_ue_data(l4, data_end))
		bfx_game_session(in, l4, s);
	else if (bfx_ue_challenge_ack(l4, data_end))
		bfx_game_validate(in, l4, s);
}

#endif /* BIFROST_XDP_MODULE_UE_H */
