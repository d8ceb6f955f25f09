// SPDX-License-Identifier: (MIT OR Apache-2.0)
//
// UCMRC's kernel fast path: a tc (tcx) ingress program that forwards the
// RTP/RTCP of established sessions without waking userspace.
//
// Userspace (the shard) keeps every decision: latching, proofs, STUN, DTLS,
// first packets, policies. Once a leg pair is established it writes one
// entry per direction into `fwd`: "a datagram to relay address:port from
// exactly this latched source goes out from relay address:port to that
// destination". The program forwards only what userspace would forward
// the same way, judged exactly as userspace judges it: headers whose
// lengths agree with each other and with the frame (the stack has not
// checked them yet at tc ingress), a valid IPv4 header checksum, RTP or
// RTCP with a plausible header (`classify_media` in relay-core's
// wire/demux.rs) of a class the route carries, charged its real payload
// length. Everything else — a miss, another source (re-latching, a
// stranger), STUN, DTLS, a fragment, IP options, lying lengths — is passed
// up unchanged (PASS_UP) to the relay's socket, and userspace decides as
// it always did. The one packet the program drops is one over its route's
// rate (the leg's limits), exactly as userspace's token bucket would,
// counted per route.
//
// Nothing here outlives the relay: the program forwards only while its
// owner renews `owner.alive_until_ns` (every half second); a relay that
// died — even with a netlink filter left holding the program — forwards
// nothing a moment later, and the next relay to start removes it.
//
// Counters per entry are per-CPU (`stats`); userspace sums them. IPv4
// routes live in `fwd`, IPv6 routes in `fwd6` (IPv6 packets with extension
// headers go up). The map structs are checked against relay-core's Rust
// mirrors through this object's BTF (io::ebpf's tests).

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/pkt_cls.h>
#include <linux/udp.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

// "Not ours": the next program on the interface (another relay's, a CNI's)
// still sees the packet, then the stack. TC_ACT_UNSPEC is tcx's TCX_NEXT;
// TC_ACT_OK (TCX_PASS) would end the chain here.
#define PASS_UP TC_ACT_UNSPEC

// Where a datagram arrived: relay IPv4 address and UDP port (network order).
struct fwd_key {
	__u32 addr;
	__u16 port;
	__u16 pad;
};

// What to do with it.
struct fwd_value {
	__u32 src_addr;   // the only source forwarded in the kernel (latched)
	__u16 src_port;
	__u16 out_port;   // relay port it leaves from (the other leg's)
	__u32 out_addr;   // relay address it leaves from
	__u32 dst_addr;   // the other side's latched address
	__u16 dst_port;
	__u16 flags;      // FLAG_LOCAL: the destination is on this host; FLAG_RTP/FLAG_RTCP: what it carries
	__u32 slot;       // index into `stats` and `buckets`
	__u32 max_pps;    // 0: no packet-rate limit
	__u32 out_ifindex; // interface toward `dst_addr`; 0: the arrival one
	__u32 pad2;
	__u64 max_bps;    // bytes per second, 0: no byte-rate limit
};

// The same for IPv6 (addresses in network order).
struct fwd6_key {
	__u8 addr[16];
	__u16 port;
	__u16 pad;
};

struct fwd6_value {
	__u8 src_addr[16];
	__u8 out_addr[16];
	__u8 dst_addr[16];
	__u16 src_port;
	__u16 out_port;
	__u16 dst_port;
	__u16 flags;
	__u32 slot;
	__u32 max_pps;
	__u32 out_ifindex;
	__u32 pad2;
	__u64 max_bps;
};

// Per-CPU counters of one entry.
struct fwd_stats {
	__u64 packets;
	__u64 bytes;
	__u64 dropped_over_rate;  // over the route's rate: dropped, as userspace would
	__u64 last_ns;            // bpf_ktime_get_ns() of the last forward
	__u64 last_rtp_ns;        // ... of the last RTP forward,
	__u32 last_ssrc;          // its SSRC
	__u32 last_seq;           // and sequence number (userspace's replay memory follows)
};

// The relay that owns the program; it forwards only while the relay lives.
struct owner {
	__u64 alive_until_ns;     // bpf_ktime_get_ns() clock; renewed by the relay
	__u64 netns;              // the relay's network namespace (its inode)
	__u32 pid;                // for diagnostics
	__u32 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct owner);
} owner SEC(".maps");

// What happened to each packet the program saw, per CPU: forwarded, or
// why it went up to userspace (indexes shared with the loader).
enum outcome {
	OUT_FORWARDED = 0,
	OUT_NOT_IPV4_UDP = 1,
	OUT_FRAGMENT_OR_OPTIONS = 2,
	OUT_NOT_RTP = 3,
	OUT_NO_ROUTE = 4,
	OUT_OTHER_SOURCE = 5,
	OUT_OVER_RATE = 6,
	OUT_NO_NEXT_HOP = 7,
	OUT_BAD_HEADER = 8,   // lengths that disagree, a bad IPv4 header checksum
	OUT_NOT_OWNED = 9,    // the owning relay stopped renewing: everything goes up
	OUT_TURN_TO_PEER = 10,    // ChannelData from a TURN client, relayed to its peer
	OUT_TURN_TO_CLIENT = 11,  // a peer's datagram, relayed to the client as ChannelData
	OUT_TURN_EXPIRED = 12,    // a TURN route past its channel, permission or allocation: up
	OUT_TURN_UNUSUAL = 13,    // ChannelData userspace must judge (padding, lengths, size): up
	OUT_COUNT = 14,
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, OUT_COUNT);
	__type(key, __u32);
	__type(value, __u64);
} outcomes SEC(".maps");

static __always_inline int outcome(__u32 what, int verdict)
{
	__u64 *n = bpf_map_lookup_elem(&outcomes, &what);
	if (n)
		*n += 1;
	return verdict;
}

// A token bucket shared by every CPU (exact rate limiting).
struct fwd_bucket {
	struct bpf_spin_lock lock;
	__u32 pad;
	__u64 pkt_tokens;   // milli-packets
	__u64 byte_tokens;  // milli-bytes
	__u64 last_ns;
};

#define MAX_ENTRIES 1048576
#define FLAG_LOCAL 1
#define FLAG_RTP 2
#define FLAG_RTCP 4
#define CLASS_OTHER 0

// The TTL (hop limit) and TOS (traffic class) a forwarded datagram leaves
// with: those of the relay's own sends, not the sender's.
#define OUT_TTL 64

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_ENTRIES);
	__type(key, struct fwd_key);
	__type(value, struct fwd_value);
} fwd SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_ENTRIES);
	__type(key, struct fwd6_key);
	__type(value, struct fwd6_value);
} fwd6 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, MAX_ENTRIES);
	__type(key, __u32);
	__type(value, struct fwd_stats);
} stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, MAX_ENTRIES);
	__type(key, __u32);
	__type(value, struct fwd_bucket);
} buckets SEC(".maps");

// One second of burst at the entry's rate, like userspace's buckets.
static __always_inline int take_tokens(__u32 slot, __u32 max_pps, __u64 max_bps, __u64 len, __u64 now)
{
	if (!max_pps && !max_bps)
		return 1;
	struct fwd_bucket *b = bpf_map_lookup_elem(&buckets, &slot);
	if (!b)
		return 0;
	int ok = 1;
	bpf_spin_lock(&b->lock);
	__u64 elapsed = now - b->last_ns;
	if (elapsed > 1000000000ULL)
		elapsed = 1000000000ULL;
	b->last_ns = now;
	if (max_pps) {
		__u64 cap = (__u64)max_pps * 1000;
		__u64 t = b->pkt_tokens + (__u64)max_pps * elapsed / 1000000;
		if (t > cap)
			t = cap;
		if (t < 1000)
			ok = 0;
		else
			t -= 1000;
		b->pkt_tokens = t;
	}
	if (max_bps) {
		__u64 cap = max_bps * 1000;
		__u64 t = b->byte_tokens + max_bps * elapsed / 1000000;
		if (t > cap)
			t = cap;
		if (t < len * 1000)
			ok = 0;
		else if (ok)
			t -= len * 1000;
		b->byte_tokens = t;
	}
	bpf_spin_unlock(&b->lock);
	return ok;
}

// Over the route's rate: dropped and counted, as userspace's bucket would.
static __always_inline int drop_over_rate(struct fwd_stats *st)
{
	if (st)
		st->dropped_over_rate += 1;
	return outcome(OUT_OVER_RATE, TC_ACT_SHOT);
}

// Sends a rewritten datagram on, counted as `forwarded`. A destination on this host
// (loopback, a local namespace): the stack delivers it to its socket.
// Otherwise out of the interface toward it, the kernel's routing and
// neighbour tables choosing the next hop and filling in the MACs, as for
// the relay's own sends (no IP forwarding involved).
static __always_inline int deliver_or_redirect(struct __sk_buff *skb, __u16 flags, __u32 out_ifindex,
					       __u32 forwarded)
{
	if (flags & FLAG_LOCAL)
		return outcome(forwarded, TC_ACT_OK);
	__u32 ifindex = out_ifindex ? out_ifindex : skb->ingress_ifindex;
	long rc = bpf_redirect_neigh(ifindex, 0, 0, 0);
	return outcome(rc == TC_ACT_REDIRECT ? forwarded : OUT_NO_NEXT_HOP, rc);
}

// Counts a forwarded media datagram on its route and sends it on.
static __always_inline int send_on(struct __sk_buff *skb, struct fwd_stats *st, __u64 len, __u64 now,
				   __u16 flags, __u32 out_ifindex)
{
	if (st) {
		st->packets += 1;
		st->bytes += len;
		st->last_ns = now;
	}
	return deliver_or_redirect(skb, flags, out_ifindex, OUT_FORWARDED);
}

static __always_inline int forward_v6(struct __sk_buff *skb);
static __always_inline int turn_v4(struct __sk_buff *skb, __u32 miss);
static __always_inline int turn_v6(struct __sk_buff *skb, __u32 miss);

// Whether the owning relay still lives.
static __always_inline int owned(__u64 now)
{
	__u32 zero = 0;
	struct owner *o = bpf_map_lookup_elem(&owner, &zero);
	return o && now < o->alive_until_ns;
}

// The class of a UDP payload of `len` bytes starting at `p`, exactly as
// userspace's classify_media calls it: FLAG_RTP (first byte 128..191, a
// second byte outside 192..223, the 12-byte header and its CSRCs fit),
// FLAG_RTCP (packet type 192..223, the first packet's length fits), else
// CLASS_OTHER (which goes up, where userspace decides).
static __always_inline int media_class(__u8 *p, void *end, __u32 len)
{
	if (len < 2 || (void *)(p + 4) > end)
		return CLASS_OTHER;
	__u8 b0 = p[0], b1 = p[1];
	if (b0 < 128 || b0 > 191)
		return CLASS_OTHER;
	if (b1 >= 192 && b1 <= 223) {
		__u32 words = ((__u32)p[2] << 8) | p[3];
		return len >= 8 && 4 * (words + 1) <= len ? FLAG_RTCP : CLASS_OTHER;
	}
	return len >= 12 + 4 * (__u32)(b0 & 0x0f) ? FLAG_RTP : CLASS_OTHER;
}

// The SSRC and sequence number of an RTP packet just forwarded.
static __always_inline void note_rtp(struct fwd_stats *st, __u8 *p, void *end, __u64 now)
{
	if (!st || (void *)(p + 12) > end)
		return;
	st->last_rtp_ns = now;
	st->last_seq = ((__u32)p[2] << 8) | p[3];
	st->last_ssrc = ((__u32)p[8] << 24) | ((__u32)p[9] << 16) | ((__u32)p[10] << 8) | p[11];
}

// Whether the IPv4 header's checksum verifies (the stack would drop it).
static __always_inline int ipv4_checksum_ok(struct iphdr *ip, void *end)
{
	__u16 *w = (void *)ip;
	if ((void *)(w + 10) > end)
		return 0;
	__u32 sum = 0;
#pragma unroll
	for (int i = 0; i < 10; i++)
		sum += w[i];
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return sum == 0xffff;
}

SEC("classifier")
int ucmrc_forward(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > end)
		return outcome(OUT_NOT_IPV4_UDP, PASS_UP);
	if (eth->h_proto == bpf_htons(ETH_P_IPV6))
		return forward_v6(skb);
	if (eth->h_proto != bpf_htons(ETH_P_IP))
		return outcome(OUT_NOT_IPV4_UDP, PASS_UP);
	struct iphdr *ip = (void *)(eth + 1);
	if ((void *)(ip + 1) > end || ip->protocol != IPPROTO_UDP)
		return outcome(OUT_NOT_IPV4_UDP, PASS_UP);
	// IP options and fragments (more fragments, or an offset) go up.
	if (ip->ihl != 5 || (ip->frag_off & bpf_htons(0x3fff)))
		return outcome(OUT_FRAGMENT_OR_OPTIONS, PASS_UP);
	struct udphdr *udp = (void *)(ip + 1);
	if ((void *)(udp + 1) > end)
		return outcome(OUT_NOT_IPV4_UDP, PASS_UP);
	// The stack checks these after tc: the frame, the IP total length and
	// the UDP length must agree exactly (a sender's lie, Ethernet padding
	// of a tiny frame, a truncated frame: up), and the header checksum
	// must verify.
	__u32 tot_len = bpf_ntohs(ip->tot_len);
	__u32 ulen = bpf_ntohs(udp->len);
	if (tot_len != skb->len - sizeof(struct ethhdr) || ulen != tot_len - sizeof(struct iphdr) ||
	    ulen < sizeof(struct udphdr) || !ipv4_checksum_ok(ip, end))
		return outcome(OUT_BAD_HEADER, PASS_UP);
	__u8 *payload = (void *)(udp + 1);
	__u32 len = ulen - sizeof(struct udphdr);
	int class = media_class(payload, end, len);
	if (class == CLASS_OTHER)
		return turn_v4(skb, OUT_NOT_RTP);

	struct fwd_key key = { .addr = ip->daddr, .port = udp->dest, .pad = 0 };
	struct fwd_value *v = bpf_map_lookup_elem(&fwd, &key);
	if (!v)
		return turn_v4(skb, OUT_NO_ROUTE);
	if (ip->saddr != v->src_addr || udp->source != v->src_port)
		return outcome(OUT_OTHER_SOURCE, PASS_UP);
	// RTCP from a muxing remote may go elsewhere than its RTP: each
	// route carries only the classes userspace sends where it does.
	if (!(v->flags & class))
		return outcome(OUT_NOT_RTP, PASS_UP);
	__u64 now = bpf_ktime_get_ns();
	if (!owned(now))
		return outcome(OUT_NOT_OWNED, PASS_UP);

	__u32 slot = v->slot;
	struct fwd_stats *st = bpf_map_lookup_elem(&stats, &slot);
	// Payload bytes, as userspace counts them.
	if (!take_tokens(v->slot, v->max_pps, v->max_bps, len, now))
		return drop_over_rate(st);
	if (class == FLAG_RTP)
		note_rtp(st, payload, end, now);

	// Rewrite addresses and ports, patching the checksums (UDP's covers
	// the pseudo-header; 0 = none stays 0 thanks to MARK_MANGLED_0).
	__u32 old_saddr = ip->saddr, old_daddr = ip->daddr;
	__u16 old_sport = udp->source, old_dport = udp->dest;
	__u32 new_saddr = v->out_addr, new_daddr = v->dst_addr;
	__u16 new_sport = v->out_port, new_dport = v->dst_port;
	int ip_off = sizeof(struct ethhdr);
	int udp_off = ip_off + sizeof(struct iphdr);
	int csum_off = udp_off + offsetof(struct udphdr, check);
	int flags = BPF_F_MARK_MANGLED_0;

	// The relay's own TTL and TOS, as its sends from userspace would have.
	__u16 old_ver_tos = *(__u16 *)ip, new_ver_tos = bpf_htons(0x4500);
	__u16 old_ttl_proto = *((__u16 *)ip + 4), new_ttl_proto = bpf_htons((OUT_TTL << 8) | IPPROTO_UDP);
	int ip_csum_off = ip_off + offsetof(struct iphdr, check);
	bpf_l3_csum_replace(skb, ip_csum_off, old_ver_tos, new_ver_tos, sizeof(new_ver_tos));
	bpf_l3_csum_replace(skb, ip_csum_off, old_ttl_proto, new_ttl_proto, sizeof(new_ttl_proto));
	bpf_skb_store_bytes(skb, ip_off, &new_ver_tos, sizeof(new_ver_tos), 0);
	bpf_skb_store_bytes(skb, ip_off + offsetof(struct iphdr, ttl), &new_ttl_proto, sizeof(new_ttl_proto), 0);
	bpf_l4_csum_replace(skb, csum_off, old_saddr, new_saddr, flags | BPF_F_PSEUDO_HDR | sizeof(new_saddr));
	bpf_l4_csum_replace(skb, csum_off, old_daddr, new_daddr, flags | BPF_F_PSEUDO_HDR | sizeof(new_daddr));
	bpf_l4_csum_replace(skb, csum_off, old_sport, new_sport, flags | sizeof(new_sport));
	bpf_l4_csum_replace(skb, csum_off, old_dport, new_dport, flags | sizeof(new_dport));
	bpf_l3_csum_replace(skb, ip_csum_off, old_saddr, new_saddr, sizeof(new_saddr));
	bpf_l3_csum_replace(skb, ip_csum_off, old_daddr, new_daddr, sizeof(new_daddr));
	bpf_skb_store_bytes(skb, ip_off + offsetof(struct iphdr, saddr), &new_saddr, sizeof(new_saddr), 0);
	bpf_skb_store_bytes(skb, ip_off + offsetof(struct iphdr, daddr), &new_daddr, sizeof(new_daddr), 0);
	bpf_skb_store_bytes(skb, udp_off + offsetof(struct udphdr, source), &new_sport, sizeof(new_sport), 0);
	bpf_skb_store_bytes(skb, udp_off + offsetof(struct udphdr, dest), &new_dport, sizeof(new_dport), 0);

	return send_on(skb, st, len, now, v->flags, v->out_ifindex);
}

// IPv6: the same decisions; no IP header checksum, the UDP checksum
// (mandatory) patched for the new addresses and ports.
static __always_inline int forward_v6(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct ipv6hdr *ip6 = (void *)(eth + 1);
	if ((void *)(ip6 + 1) > end)
		return outcome(OUT_NOT_IPV4_UDP, PASS_UP);
	// Extension headers (fragments included) go up.
	if (ip6->nexthdr != IPPROTO_UDP)
		return outcome(ip6->nexthdr == 44 ? OUT_FRAGMENT_OR_OPTIONS : OUT_NOT_IPV4_UDP, PASS_UP);
	struct udphdr *udp = (void *)(ip6 + 1);
	if ((void *)(udp + 1) > end)
		return outcome(OUT_NOT_IPV4_UDP, PASS_UP);
	// The frame, the payload length and the UDP length agree exactly.
	__u32 plen = bpf_ntohs(ip6->payload_len);
	__u32 ulen = bpf_ntohs(udp->len);
	if (plen != skb->len - sizeof(struct ethhdr) - sizeof(struct ipv6hdr) || ulen != plen ||
	    ulen < sizeof(struct udphdr))
		return outcome(OUT_BAD_HEADER, PASS_UP);
	__u8 *payload = (void *)(udp + 1);
	__u32 len = ulen - sizeof(struct udphdr);
	int class = media_class(payload, end, len);
	if (class == CLASS_OTHER)
		return turn_v6(skb, OUT_NOT_RTP);

	struct fwd6_key key = {};
	__builtin_memcpy(key.addr, &ip6->daddr, 16);
	key.port = udp->dest;
	struct fwd6_value *v = bpf_map_lookup_elem(&fwd6, &key);
	if (!v)
		return turn_v6(skb, OUT_NO_ROUTE);
	__u32 old_saddr[4], old_daddr[4];
	__builtin_memcpy(old_saddr, &ip6->saddr, 16);
	__builtin_memcpy(old_daddr, &ip6->daddr, 16);
	__u32 want[4];
	__builtin_memcpy(want, v->src_addr, 16);
	if ((old_saddr[0] ^ want[0]) | (old_saddr[1] ^ want[1]) | (old_saddr[2] ^ want[2]) | (old_saddr[3] ^ want[3]) ||
	    udp->source != v->src_port)
		return outcome(OUT_OTHER_SOURCE, PASS_UP);
	if (!(v->flags & class))
		return outcome(OUT_NOT_RTP, PASS_UP);
	__u64 now = bpf_ktime_get_ns();
	if (!owned(now))
		return outcome(OUT_NOT_OWNED, PASS_UP);

	__u32 slot = v->slot;
	struct fwd_stats *st = bpf_map_lookup_elem(&stats, &slot);
	if (!take_tokens(v->slot, v->max_pps, v->max_bps, len, now))
		return drop_over_rate(st);
	if (class == FLAG_RTP)
		note_rtp(st, payload, end, now);

	__u32 new_saddr[4], new_daddr[4];
	__builtin_memcpy(new_saddr, v->out_addr, 16);
	__builtin_memcpy(new_daddr, v->dst_addr, 16);
	__u16 old_sport = udp->source, old_dport = udp->dest;
	__u16 new_sport = v->out_port, new_dport = v->dst_port;
	int ip_off = sizeof(struct ethhdr);
	int udp_off = ip_off + sizeof(struct ipv6hdr);
	int csum_off = udp_off + offsetof(struct udphdr, check);

	// The relay's own traffic class and hop limit (not covered by the UDP
	// checksum): version 6, class 0, the flow label kept.
	__u32 old_vtc = *(__u32 *)ip6;
	__u32 new_vtc = (old_vtc & bpf_htonl(0x000fffff)) | bpf_htonl(0x60000000);
	__u8 hop = OUT_TTL;
	bpf_skb_store_bytes(skb, ip_off, &new_vtc, sizeof(new_vtc), 0);
	bpf_skb_store_bytes(skb, ip_off + offsetof(struct ipv6hdr, hop_limit), &hop, sizeof(hop), 0);
	__s64 diff = bpf_csum_diff(old_saddr, 16, new_saddr, 16, 0);
	diff = bpf_csum_diff(old_daddr, 16, new_daddr, 16, diff);
	bpf_l4_csum_replace(skb, csum_off, 0, diff, BPF_F_PSEUDO_HDR);
	bpf_l4_csum_replace(skb, csum_off, old_sport, new_sport, sizeof(new_sport));
	bpf_l4_csum_replace(skb, csum_off, old_dport, new_dport, sizeof(new_dport));
	bpf_skb_store_bytes(skb, ip_off + offsetof(struct ipv6hdr, saddr), new_saddr, 16, 0);
	bpf_skb_store_bytes(skb, ip_off + offsetof(struct ipv6hdr, daddr), new_daddr, 16, 0);
	bpf_skb_store_bytes(skb, udp_off + offsetof(struct udphdr, source), &new_sport, sizeof(new_sport), 0);
	bpf_skb_store_bytes(skb, udp_off + offsetof(struct udphdr, dest), &new_dport, sizeof(new_dport), 0);

	return send_on(skb, st, len, now, v->flags, v->out_ifindex);
}

// ---------------------------------------------------------------------------
// TURN (RFC 8656) channels over UDP, IPv4 and IPv6.
//
// Userspace (relay-core's turn::server) keeps every decision: requests,
// credentials, allocations, permissions, Send/Data indications, first
// packets. For each live channel of a UDP allocation it writes two routes:
// `turn_in` — ChannelData from exactly this client 5-tuple on this channel
// goes to the peer from the relayed address, its 4-byte header (and zero
// padding) removed; `turn_out` — a datagram from exactly this peer to the
// relayed address goes to the client from the listener it uses, behind a
// ChannelData header. Each route carries `until_ns`, the earliest of the
// channel's, the permission's and the allocation's expiry: past it the
// packet goes up and userspace decides (a Data indication, a drop). The
// allocation's byte rate is one token bucket shared by both directions and
// every channel (`turn_buckets`), handed over from userspace's bucket;
// counters per allocation are per-CPU (`turn_stats`). IPv6 routes live in
// `turn6_in` and `turn6_out`.
//
// The headers stay where they are (so a checksum the stack or a NIC still
// has to complete keeps pointing at them): the payload moves by four bytes
// and the tail shrinks or grows; the checksums are patched for every
// changed field, the ChannelData header's words and the lengths.

struct turn_in_key {
	__u32 client_addr;
	__u32 listener_addr;
	__u16 client_port;
	__u16 listener_port;
	__u16 channel;        // network order
	__u16 pad;
};

struct turn_in_value {
	__u32 relay_addr;     // the relayed address it leaves from
	__u32 peer_addr;
	__u16 relay_port;
	__u16 peer_port;
	__u32 slot;           // the allocation's `turn_stats` and `turn_buckets`
	__u32 out_ifindex;    // interface toward the peer; 0: the arrival one
	__u16 flags;          // FLAG_LOCAL: the peer is on this host
	__u16 pad;
	__u64 until_ns;       // forwarded before this bpf_ktime_get_ns() only
};

struct turn_out_key {
	__u32 peer_addr;
	__u32 relay_addr;
	__u16 peer_port;
	__u16 relay_port;
};

struct turn_out_value {
	__u32 listener_addr;  // it leaves from the listener the client uses
	__u32 client_addr;
	__u16 listener_port;
	__u16 client_port;
	__u16 channel;        // network order
	__u16 flags;          // FLAG_LOCAL: the client is on this host
	__u32 slot;
	__u32 out_ifindex;
	__u64 until_ns;
};

// Per-CPU counters of one allocation.
struct turn_stats {
	__u64 to_peer_packets;
	__u64 to_peer_bytes;      // application data, as userspace counts it
	__u64 to_client_packets;
	__u64 to_client_bytes;
	__u64 over_rate;          // dropped over the allocation's rate
};

// One allocation's byte budget (userspace's RateBucket, in the kernel).
struct turn_bucket {
	struct bpf_spin_lock lock;
	__u32 pad;
	__u64 tokens;             // bytes
	__u64 last_ns;
	__u64 bytes_per_sec;
	__u64 burst;
};

#define MAX_TURN_ROUTES 262144
#define MAX_TURN_SLOTS 65536
// Largest payload moved in the kernel; larger goes up.
#define TURN_SCRATCH 2048

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_TURN_ROUTES);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct turn_in_key);
	__type(value, struct turn_in_value);
} turn_in SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_TURN_ROUTES);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct turn_out_key);
	__type(value, struct turn_out_value);
} turn_out SEC(".maps");

// The same over IPv6 (addresses in network order).
struct turn6_in_key {
	__u8 client_addr[16];
	__u8 listener_addr[16];
	__u16 client_port;
	__u16 listener_port;
	__u16 channel;
	__u16 pad;
};

struct turn6_in_value {
	__u8 relay_addr[16];
	__u8 peer_addr[16];
	__u16 relay_port;
	__u16 peer_port;
	__u32 slot;
	__u32 out_ifindex;
	__u16 flags;
	__u16 pad;
	__u64 until_ns;
};

struct turn6_out_key {
	__u8 peer_addr[16];
	__u8 relay_addr[16];
	__u16 peer_port;
	__u16 relay_port;
};

struct turn6_out_value {
	__u8 listener_addr[16];
	__u8 client_addr[16];
	__u16 listener_port;
	__u16 client_port;
	__u16 channel;
	__u16 flags;
	__u32 slot;
	__u32 out_ifindex;
	__u64 until_ns;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_TURN_ROUTES);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct turn6_in_key);
	__type(value, struct turn6_in_value);
} turn6_in SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_TURN_ROUTES);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct turn6_out_key);
	__type(value, struct turn6_out_value);
} turn6_out SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, MAX_TURN_SLOTS);
	__type(key, __u32);
	__type(value, struct turn_stats);
} turn_stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, MAX_TURN_SLOTS);
	__type(key, __u32);
	__type(value, struct turn_bucket);
} turn_buckets SEC(".maps");

struct turn_scratch {
	__u8 bytes[TURN_SCRATCH];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct turn_scratch);
} turn_scratch SEC(".maps");

// Takes `len` bytes from the allocation's bucket, refilled as userspace's
// RateBucket refills (whole microseconds since the last call).
static __always_inline int turn_take(__u32 slot, __u64 len, __u64 now)
{
	struct turn_bucket *b = bpf_map_lookup_elem(&turn_buckets, &slot);
	if (!b)
		return 0;
	int ok = 0;
	bpf_spin_lock(&b->lock);
	__u64 elapsed_us = now > b->last_ns ? (now - b->last_ns) / 1000 : 0;
	if (elapsed_us > 0xffffffffULL)
		elapsed_us = 0xffffffffULL;
	b->last_ns = now;
	__u64 rate = b->bytes_per_sec;
	__u64 gained;
	// Both under 2^32, the product fits; a rate beyond is no limit.
	if (rate >> 32)
		gained = elapsed_us ? 0xffffffffffffffffULL : 0;
	else
		gained = elapsed_us * rate / 1000000;
	__u64 t = b->tokens + gained;
	if (t < b->tokens || t > b->burst)
		t = b->burst;
	if (t >= len) {
		t -= len;
		ok = 1;
	}
	b->tokens = t;
	bpf_spin_unlock(&b->lock);
	return ok;
}

// Moves `n` payload bytes from `from` to `to` (offsets in the frame).
static __always_inline int move_payload(struct __sk_buff *skb, __u32 from, __u32 to, __u32 n)
{
	if (n == 0)
		return 0;
	__u32 zero = 0;
	struct turn_scratch *s = bpf_map_lookup_elem(&turn_scratch, &zero);
	if (!s || n > TURN_SCRATCH)
		return -1;
	// The same value, in a form whose bounds the verifier keeps (1..2048).
	__u32 size = ((n - 1) & (TURN_SCRATCH - 1)) + 1;
	if (bpf_skb_load_bytes(skb, from, s->bytes, size) < 0)
		return -1;
	return bpf_skb_store_bytes(skb, to, s->bytes, size, 0) < 0 ? -1 : 0;
}

// turn_admit's "relay it" (no tc action has this value).
#define TURN_GO 0x7fff

// Whether a matched route may relay now: within its deadline, its relay
// alive, not a GSO aggregate, `charge` bytes within the allocation's
// budget. Returns TURN_GO, else the verdict (up, or dropped over the rate
// and counted).
static __always_inline int turn_admit(struct __sk_buff *skb, __u64 until_ns, __u32 slot, __u64 charge,
				      struct turn_stats *st)
{
	__u64 now = bpf_ktime_get_ns();
	if (now >= until_ns)
		return outcome(OUT_TURN_EXPIRED, PASS_UP);
	if (!owned(now))
		return outcome(OUT_NOT_OWNED, PASS_UP);
	if (skb->gso_segs > 1)
		return outcome(OUT_TURN_UNUSUAL, PASS_UP);
	if (!turn_take(slot, charge, now)) {
		if (st)
			st->over_rate += 1;
		return outcome(OUT_OVER_RATE, TC_ACT_SHOT);
	}
	return TURN_GO;
}

// The data length of ChannelData of `len` bytes whose header words are
// `cd`, when the kernel may unwrap it: the length within the datagram,
// at most 3 bytes of padding after it and those zeros, at most
// TURN_SCRATCH bytes. Else -1 (up: userspace judges it).
static __always_inline int turn_data_len(struct __sk_buff *skb, __u32 pay_off, __u32 len, __u32 cd)
{
	__u16 dlen = bpf_ntohs((__u16)(cd >> 16));
	if (4 + (__u32)dlen > len || len - 4 - dlen > 3 || dlen > TURN_SCRATCH)
		return -1;
	__u32 pad = len - 4 - dlen;
	if (pad) {
		__u8 tail[3] = {};
		if (bpf_skb_load_bytes(skb, pay_off + 4 + dlen, tail, pad & 3) < 0 || tail[0] | tail[1] | tail[2])
			return -1;
	}
	return dlen;
}

// ChannelData of `len` bytes at `pay_off` becomes its `dlen` data bytes.
static __always_inline int turn_unwrap(struct __sk_buff *skb, __u32 pay_off, __u32 len, __u32 dlen)
{
	if (move_payload(skb, pay_off + 4, pay_off, dlen) < 0)
		return -1;
	return bpf_skb_change_tail(skb, skb->len - (len - dlen), 0) < 0 ? -1 : 0;
}

// `len` data bytes at `pay_off` go behind the channel's header `cd`
// (grown at the tail first; up when the interface cannot take 4 more).
static __always_inline int turn_wrap(struct __sk_buff *skb, __u32 pay_off, __u32 len, __u32 cd)
{
	if (move_payload(skb, pay_off, pay_off + 4, len) < 0)
		return -1;
	return bpf_skb_store_bytes(skb, pay_off, &cd, 4, 0) < 0 ? -1 : 0;
}

// Rewrites the IPv4 and UDP headers of a datagram whose UDP length goes
// from `old_ulen` to `new_ulen` (the payload already in place): addresses,
// ports, lengths, the relay's TOS and TTL, both checksums patched.
// `cd_old`/`cd_new`: the ChannelData header words leaving or entering the
// UDP checksum's sum (0 where none).
static __always_inline void rewrite_v4(struct __sk_buff *skb, __u32 old_saddr, __u32 old_daddr, __u16 old_sport,
				      __u16 old_dport, __u32 new_saddr, __u32 new_daddr, __u16 new_sport,
				      __u16 new_dport, __u16 old_ulen, __u16 new_ulen, __u32 cd_old, __u32 cd_new,
				      __u16 old_ver_tos, __u16 old_ttl_proto)
{
	int ip_off = sizeof(struct ethhdr);
	int udp_off = ip_off + sizeof(struct iphdr);
	int csum_off = udp_off + offsetof(struct udphdr, check);
	int ip_csum_off = ip_off + offsetof(struct iphdr, check);
	int flags = BPF_F_MARK_MANGLED_0;
	__u16 old_tot = bpf_htons(old_ulen + sizeof(struct iphdr)), new_tot = bpf_htons(new_ulen + sizeof(struct iphdr));
	__u16 old_ul = bpf_htons(old_ulen), new_ul = bpf_htons(new_ulen);
	__u16 new_ver_tos = bpf_htons(0x4500);
	__u16 new_ttl_proto = bpf_htons((OUT_TTL << 8) | IPPROTO_UDP);

	bpf_l3_csum_replace(skb, ip_csum_off, old_ver_tos, new_ver_tos, 2);
	bpf_l3_csum_replace(skb, ip_csum_off, old_ttl_proto, new_ttl_proto, 2);
	bpf_l3_csum_replace(skb, ip_csum_off, old_tot, new_tot, 2);
	bpf_l3_csum_replace(skb, ip_csum_off, old_saddr, new_saddr, 4);
	bpf_l3_csum_replace(skb, ip_csum_off, old_daddr, new_daddr, 4);
	bpf_skb_store_bytes(skb, ip_off, &new_ver_tos, 2, 0);
	bpf_skb_store_bytes(skb, ip_off + offsetof(struct iphdr, tot_len), &new_tot, 2, 0);
	bpf_skb_store_bytes(skb, ip_off + offsetof(struct iphdr, ttl), &new_ttl_proto, 2, 0);
	bpf_skb_store_bytes(skb, ip_off + offsetof(struct iphdr, saddr), &new_saddr, 4, 0);
	bpf_skb_store_bytes(skb, ip_off + offsetof(struct iphdr, daddr), &new_daddr, 4, 0);

	// The pseudo-header (addresses, length), then the header's fields and
	// the ChannelData words.
	bpf_l4_csum_replace(skb, csum_off, old_saddr, new_saddr, flags | BPF_F_PSEUDO_HDR | 4);
	bpf_l4_csum_replace(skb, csum_off, old_daddr, new_daddr, flags | BPF_F_PSEUDO_HDR | 4);
	bpf_l4_csum_replace(skb, csum_off, old_ul, new_ul, flags | BPF_F_PSEUDO_HDR | 2);
	bpf_l4_csum_replace(skb, csum_off, old_ul, new_ul, flags | 2);
	bpf_l4_csum_replace(skb, csum_off, old_sport, new_sport, flags | 2);
	bpf_l4_csum_replace(skb, csum_off, old_dport, new_dport, flags | 2);
	bpf_l4_csum_replace(skb, csum_off, cd_old, cd_new, flags | 4);
	bpf_skb_store_bytes(skb, udp_off + offsetof(struct udphdr, source), &new_sport, 2, 0);
	bpf_skb_store_bytes(skb, udp_off + offsetof(struct udphdr, dest), &new_dport, 2, 0);
	bpf_skb_store_bytes(skb, udp_off + offsetof(struct udphdr, len), &new_ul, 2, 0);
}

// The IPv6 form: no header checksum; the payload length follows the UDP
// length, the relay's traffic class and hop limit (the flow label kept),
// the UDP checksum (mandatory) patched for the addresses, the 32-bit
// pseudo-header length, the ports, the header's length and the
// ChannelData words.
static __always_inline void rewrite_v6(struct __sk_buff *skb, __u32 *old_saddr, __u32 *old_daddr, __u16 old_sport,
				      __u16 old_dport, __u32 *new_saddr, __u32 *new_daddr, __u16 new_sport,
				      __u16 new_dport, __u16 old_ulen, __u16 new_ulen, __u32 cd_old, __u32 cd_new,
				      __u32 old_vtc)
{
	int ip_off = sizeof(struct ethhdr);
	int udp_off = ip_off + sizeof(struct ipv6hdr);
	int csum_off = udp_off + offsetof(struct udphdr, check);
	__u16 old_ul = bpf_htons(old_ulen), new_ul = bpf_htons(new_ulen);
	__u32 old_pl = bpf_htonl(old_ulen), new_pl = bpf_htonl(new_ulen);
	__u32 new_vtc = (old_vtc & bpf_htonl(0x000fffff)) | bpf_htonl(0x60000000);
	__u8 hop = OUT_TTL;
	bpf_skb_store_bytes(skb, ip_off, &new_vtc, 4, 0);
	bpf_skb_store_bytes(skb, ip_off + offsetof(struct ipv6hdr, payload_len), &new_ul, 2, 0);
	bpf_skb_store_bytes(skb, ip_off + offsetof(struct ipv6hdr, hop_limit), &hop, 1, 0);
	__s64 diff = bpf_csum_diff(old_saddr, 16, new_saddr, 16, 0);
	diff = bpf_csum_diff(old_daddr, 16, new_daddr, 16, diff);
	bpf_l4_csum_replace(skb, csum_off, 0, diff, BPF_F_PSEUDO_HDR);
	bpf_l4_csum_replace(skb, csum_off, old_pl, new_pl, BPF_F_PSEUDO_HDR | 4);
	bpf_l4_csum_replace(skb, csum_off, old_ul, new_ul, 2);
	bpf_l4_csum_replace(skb, csum_off, old_sport, new_sport, 2);
	bpf_l4_csum_replace(skb, csum_off, old_dport, new_dport, 2);
	bpf_l4_csum_replace(skb, csum_off, cd_old, cd_new, 4);
	bpf_skb_store_bytes(skb, ip_off + offsetof(struct ipv6hdr, saddr), new_saddr, 16, 0);
	bpf_skb_store_bytes(skb, ip_off + offsetof(struct ipv6hdr, daddr), new_daddr, 16, 0);
	bpf_skb_store_bytes(skb, udp_off + offsetof(struct udphdr, source), &new_sport, 2, 0);
	bpf_skb_store_bytes(skb, udp_off + offsetof(struct udphdr, dest), &new_dport, 2, 0);
	bpf_skb_store_bytes(skb, udp_off + offsetof(struct udphdr, len), &new_ul, 2, 0);
}

// What a TURN route rewrites a datagram to, of either family (IPv4
// addresses in the first word).
struct turn_rewrite {
	__u32 saddr[4];
	__u32 daddr[4];
	__u16 sport;
	__u16 dport;
	__u16 flags;
	__u16 pad;
	__u32 out_ifindex;
};

// Counts and rewrites one relayed datagram (payload already moved) and
// sends it on; `to_peer`: ChannelData unwrapped (else wrapped).
static __always_inline int turn_finish(struct __sk_buff *skb, int v6, struct turn_rewrite *w, __u32 old_ulen,
				       __u32 new_ulen, __u32 cd, int to_peer, struct turn_stats *st, __u32 data)
{
	void *start = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	__u32 cd_old = to_peer ? cd : 0, cd_new = to_peer ? 0 : cd;
	if (v6) {
		struct ipv6hdr *ip6 = start + sizeof(struct ethhdr);
		struct udphdr *udp = (void *)(ip6 + 1);
		if ((void *)(udp + 1) > end)
			return outcome(OUT_TURN_UNUSUAL, TC_ACT_SHOT);
		__u32 old_saddr[4], old_daddr[4];
		__builtin_memcpy(old_saddr, &ip6->saddr, 16);
		__builtin_memcpy(old_daddr, &ip6->daddr, 16);
		rewrite_v6(skb, old_saddr, old_daddr, udp->source, udp->dest, w->saddr, w->daddr, w->sport, w->dport,
			   (__u16)old_ulen, (__u16)new_ulen, cd_old, cd_new, *(__u32 *)ip6);
	} else {
		struct iphdr *ip = start + sizeof(struct ethhdr);
		struct udphdr *udp = (void *)(ip + 1);
		if ((void *)(udp + 1) > end)
			return outcome(OUT_TURN_UNUSUAL, TC_ACT_SHOT);
		rewrite_v4(skb, ip->saddr, ip->daddr, udp->source, udp->dest, w->saddr[0], w->daddr[0], w->sport,
			   w->dport, (__u16)old_ulen, (__u16)new_ulen, cd_old, cd_new, *(__u16 *)ip,
			   *((__u16 *)ip + 4));
	}
	if (st) {
		if (to_peer) {
			st->to_peer_packets += 1;
			st->to_peer_bytes += data;
		} else {
			st->to_client_packets += 1;
			st->to_client_bytes += data;
		}
	}
	return deliver_or_redirect(skb, w->flags, w->out_ifindex, to_peer ? OUT_TURN_TO_PEER : OUT_TURN_TO_CLIENT);
}

// ChannelData from a client (`len` bytes at `pay_off`, header words `cd`):
// the data, unwrapped, to the channel's peer.
static __always_inline int turn_to_peer(struct __sk_buff *skb, int v6, __u32 pay_off, __u32 len, __u32 cd,
					__u64 until_ns, __u32 slot, struct turn_rewrite *w)
{
	int dlen = turn_data_len(skb, pay_off, len, cd);
	if (dlen < 0)
		return outcome(OUT_TURN_UNUSUAL, PASS_UP);
	struct turn_stats *st = bpf_map_lookup_elem(&turn_stats, &slot);
	int verdict = turn_admit(skb, until_ns, slot, dlen, st);
	if (verdict != TURN_GO)
		return verdict;
	if (turn_unwrap(skb, pay_off, len, dlen) < 0)
		return outcome(OUT_TURN_UNUSUAL, TC_ACT_SHOT);
	return turn_finish(skb, v6, w, len + sizeof(struct udphdr), dlen + sizeof(struct udphdr), cd, 1, st, dlen);
}

// A peer's datagram (`len` bytes at `pay_off`) to a relayed address: to
// the client, behind the channel's header.
static __always_inline int turn_to_client(struct __sk_buff *skb, int v6, __u32 pay_off, __u32 len, __u16 channel,
					  __u64 until_ns, __u32 slot, struct turn_rewrite *w)
{
	if (len > TURN_SCRATCH)
		return outcome(OUT_TURN_UNUSUAL, PASS_UP);
	struct turn_stats *st = bpf_map_lookup_elem(&turn_stats, &slot);
	int verdict = turn_admit(skb, until_ns, slot, len, st);
	if (verdict != TURN_GO)
		return verdict;
	__u16 header[2] = { channel, bpf_htons((__u16)len) };
	__u32 cd;
	__builtin_memcpy(&cd, header, 4);
	// Too large for the interface once grown: up (userspace sends it).
	if (bpf_skb_change_tail(skb, skb->len + 4, 0) < 0)
		return outcome(OUT_TURN_UNUSUAL, PASS_UP);
	if (turn_wrap(skb, pay_off, len, cd) < 0)
		return outcome(OUT_TURN_UNUSUAL, TC_ACT_SHOT);
	return turn_finish(skb, v6, w, len + sizeof(struct udphdr), len + 4 + sizeof(struct udphdr), cd, 0, st, len);
}

// A UDP datagram over IPv4 that is not established media (its headers
// already checked by ucmrc_forward): a TURN channel's, or up with `miss`.
static __always_inline int turn_v4(struct __sk_buff *skb, __u32 miss)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	struct iphdr *ip = data + sizeof(struct ethhdr);
	struct udphdr *udp = (void *)(ip + 1);
	if ((void *)(udp + 1) > end)
		return outcome(miss, PASS_UP);
	__u32 pay_off = sizeof(struct ethhdr) + sizeof(struct iphdr) + sizeof(struct udphdr);
	__u32 len = bpf_ntohs(udp->len) - sizeof(struct udphdr);
	__u8 *payload = (void *)(udp + 1);
	struct turn_rewrite w = {};
	if (len >= 4 && (void *)(payload + 4) <= end && (payload[0] & 0xc0) == 0x40) {
		struct turn_in_key k = {
			.client_addr = ip->saddr,
			.listener_addr = ip->daddr,
			.client_port = udp->source,
			.listener_port = udp->dest,
			.channel = *(__u16 *)payload,
			.pad = 0,
		};
		struct turn_in_value *v = bpf_map_lookup_elem(&turn_in, &k);
		if (v) {
			w.saddr[0] = v->relay_addr;
			w.daddr[0] = v->peer_addr;
			w.sport = v->relay_port;
			w.dport = v->peer_port;
			w.flags = v->flags;
			w.out_ifindex = v->out_ifindex;
			return turn_to_peer(skb, 0, pay_off, len, *(__u32 *)payload, v->until_ns, v->slot, &w);
		}
	}
	struct turn_out_key k = {
		.peer_addr = ip->saddr,
		.relay_addr = ip->daddr,
		.peer_port = udp->source,
		.relay_port = udp->dest,
	};
	struct turn_out_value *v = bpf_map_lookup_elem(&turn_out, &k);
	if (!v)
		return outcome(miss, PASS_UP);
	w.saddr[0] = v->listener_addr;
	w.daddr[0] = v->client_addr;
	w.sport = v->listener_port;
	w.dport = v->client_port;
	w.flags = v->flags;
	w.out_ifindex = v->out_ifindex;
	return turn_to_client(skb, 0, pay_off, len, v->channel, v->until_ns, v->slot, &w);
}

// The same over IPv6 (headers already checked by forward_v6).
static __always_inline int turn_v6(struct __sk_buff *skb, __u32 miss)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	struct ipv6hdr *ip6 = data + sizeof(struct ethhdr);
	struct udphdr *udp = (void *)(ip6 + 1);
	if ((void *)(udp + 1) > end)
		return outcome(miss, PASS_UP);
	__u32 pay_off = sizeof(struct ethhdr) + sizeof(struct ipv6hdr) + sizeof(struct udphdr);
	__u32 len = bpf_ntohs(udp->len) - sizeof(struct udphdr);
	__u8 *payload = (void *)(udp + 1);
	struct turn_rewrite w = {};
	if (len >= 4 && (void *)(payload + 4) <= end && (payload[0] & 0xc0) == 0x40) {
		struct turn6_in_key k = {};
		__builtin_memcpy(k.client_addr, &ip6->saddr, 16);
		__builtin_memcpy(k.listener_addr, &ip6->daddr, 16);
		k.client_port = udp->source;
		k.listener_port = udp->dest;
		k.channel = *(__u16 *)payload;
		struct turn6_in_value *v = bpf_map_lookup_elem(&turn6_in, &k);
		if (v) {
			__builtin_memcpy(w.saddr, v->relay_addr, 16);
			__builtin_memcpy(w.daddr, v->peer_addr, 16);
			w.sport = v->relay_port;
			w.dport = v->peer_port;
			w.flags = v->flags;
			w.out_ifindex = v->out_ifindex;
			return turn_to_peer(skb, 1, pay_off, len, *(__u32 *)payload, v->until_ns, v->slot, &w);
		}
	}
	struct turn6_out_key k = {};
	__builtin_memcpy(k.peer_addr, &ip6->saddr, 16);
	__builtin_memcpy(k.relay_addr, &ip6->daddr, 16);
	k.peer_port = udp->source;
	k.relay_port = udp->dest;
	struct turn6_out_value *v = bpf_map_lookup_elem(&turn6_out, &k);
	if (!v)
		return outcome(miss, PASS_UP);
	__builtin_memcpy(w.saddr, v->listener_addr, 16);
	__builtin_memcpy(w.daddr, v->client_addr, 16);
	w.sport = v->listener_port;
	w.dport = v->client_port;
	w.flags = v->flags;
	w.out_ifindex = v->out_ifindex;
	return turn_to_client(skb, 1, pay_off, len, v->channel, v->until_ns, v->slot, &w);
}

char LICENSE[] SEC("license") = "Dual MIT/GPL";
