//! The map structs exist twice, in C (forward.bpf.c) and in Rust (above):
//! this test reads the committed object's BTF — the compiler's own record
//! of the C layout — and holds every Rust mirror to it, field by field.

use std::mem::{offset_of, size_of};

use super::turn::{
    Turn6InKey, Turn6InValue, Turn6OutKey, Turn6OutValue, TurnBucketC, TurnInKey, TurnInValue, TurnOutKey,
    TurnOutValue, TurnStatsC,
};
use super::{Fwd6Key, Fwd6Value, FwdBucket, FwdKey, FwdStats, FwdValue, Owner, PROGRAM};

/// The bytes of the ELF section `name` (ELF64, little-endian).
fn section<'a>(elf: &'a [u8], name: &str) -> &'a [u8] {
    let u16_at = |o: usize| usize::from(u16::from_le_bytes([elf[o], elf[o + 1]]));
    let u32_at = |o: usize| u32::from_le_bytes(elf[o..o + 4].try_into().expect("4")) as usize;
    let u64_at = |o: usize| u64::from_le_bytes(elf[o..o + 8].try_into().expect("8")) as usize;
    assert_eq!(&elf[..6], b"\x7fELF\x02\x01", "an ELF64 little-endian object");
    let (shoff, shentsize, shnum, shstrndx) = (u64_at(0x28), u16_at(0x3a), u16_at(0x3c), u16_at(0x3e));
    let header = |i: usize| shoff + i * shentsize;
    let names = u64_at(header(shstrndx) + 0x18);
    (0..shnum)
        .find_map(|i| {
            let h = header(i);
            let n = names + u32_at(h);
            let end = elf[n..].iter().position(|b| *b == 0).expect("nul");
            (&elf[n..n + end] == name.as_bytes()).then(|| &elf[u64_at(h + 0x18)..u64_at(h + 0x18) + u64_at(h + 0x20)])
        })
        .unwrap_or_else(|| panic!("no {name} section"))
}

/// Every struct of a BTF blob: name → (size, [(member, byte offset)]).
fn btf_structs(btf: &[u8]) -> std::collections::HashMap<String, (usize, Vec<(String, usize)>)> {
    let u32_at = |o: usize| u32::from_le_bytes(btf[o..o + 4].try_into().expect("4")) as usize;
    assert_eq!(&btf[..2], &[0x9f, 0xeb], "BTF magic");
    let hdr_len = u32_at(4);
    let (type_off, type_len, str_off) = (u32_at(8), u32_at(12), u32_at(16));
    let types = hdr_len + type_off;
    let strings = hdr_len + str_off;
    let string = |off: usize| {
        let s = &btf[strings + off..];
        String::from_utf8_lossy(&s[..s.iter().position(|b| *b == 0).expect("nul")]).to_string()
    };
    let mut out = std::collections::HashMap::new();
    let mut at = types;
    while at < types + type_len {
        let (name, info, size) = (u32_at(at), u32_at(at + 4), u32_at(at + 8));
        let (kind, vlen) = ((info >> 24) & 0x1f, info & 0xffff);
        at += 12;
        match kind {
            // struct (4), union (5): vlen members of 12 bytes.
            4 | 5 => {
                let members = (0..vlen)
                    .map(|i| {
                        let m = at + 12 * i;
                        let bits = u32_at(m + 8) & if info & (1 << 31) != 0 { 0xff_ffff } else { u32::MAX as usize };
                        (string(u32_at(m)), bits / 8)
                    })
                    .collect();
                if kind == 4 && name != 0 {
                    out.insert(string(name), (size, members));
                }
                at += 12 * vlen;
            }
            1 | 14 | 17 => at += 4,     // int, var, decl tag
            3 => at += 12,              // array
            6 | 13 => at += 8 * vlen,   // enum, func proto
            15 | 19 => at += 12 * vlen, // datasec, enum64
            _ => {}                     // ptr, fwd, typedef, volatile, const, restrict, func, float, type tag
        }
    }
    out
}

macro_rules! layout {
    ($t:ty; $($f:ident),+) => {
        (size_of::<$t>(), vec![$((stringify!($f).to_string(), offset_of!($t, $f))),+])
    };
}

#[test]
fn the_rust_mirrors_have_the_c_layout_of_every_map_struct() {
    let structs = btf_structs(section(PROGRAM, ".BTF"));
    let want = [
        ("fwd_key", layout!(FwdKey; addr, port, pad)),
        (
            "fwd_value",
            layout!(FwdValue; src_addr, src_port, out_port, out_addr, dst_addr, dst_port, flags, slot, max_pps, out_ifindex, pad2, max_bps),
        ),
        ("fwd6_key", layout!(Fwd6Key; addr, port, pad)),
        (
            "fwd6_value",
            layout!(Fwd6Value; src_addr, out_addr, dst_addr, src_port, out_port, dst_port, flags, slot, max_pps, out_ifindex, pad2, max_bps),
        ),
        ("fwd_stats", layout!(FwdStats; packets, bytes, dropped_over_rate, last_ns, last_rtp_ns, last_ssrc, last_seq)),
        ("fwd_bucket", layout!(FwdBucket; lock, pad, pkt_tokens, byte_tokens, last_ns)),
        ("owner", layout!(Owner; alive_until_ns, netns, pid, pad)),
        ("turn_in_key", layout!(TurnInKey; client_addr, listener_addr, client_port, listener_port, channel, pad)),
        (
            "turn_in_value",
            layout!(TurnInValue; relay_addr, peer_addr, relay_port, peer_port, slot, out_ifindex, flags, pad, until_ns),
        ),
        ("turn_out_key", layout!(TurnOutKey; peer_addr, relay_addr, peer_port, relay_port)),
        (
            "turn_out_value",
            layout!(TurnOutValue; listener_addr, client_addr, listener_port, client_port, channel, flags, slot, out_ifindex, until_ns),
        ),
        ("turn6_in_key", layout!(Turn6InKey; client_addr, listener_addr, client_port, listener_port, channel, pad)),
        (
            "turn6_in_value",
            layout!(Turn6InValue; relay_addr, peer_addr, relay_port, peer_port, slot, out_ifindex, flags, pad, until_ns),
        ),
        ("turn6_out_key", layout!(Turn6OutKey; peer_addr, relay_addr, peer_port, relay_port)),
        (
            "turn6_out_value",
            layout!(Turn6OutValue; listener_addr, client_addr, listener_port, client_port, channel, flags, slot, out_ifindex, until_ns),
        ),
        (
            "turn_stats",
            layout!(TurnStatsC; to_peer_packets, to_peer_bytes, to_client_packets, to_client_bytes, over_rate),
        ),
        ("turn_bucket", layout!(TurnBucketC; lock, pad, tokens, last_ns, bytes_per_sec, burst)),
    ];
    for (name, rust) in want {
        let c = structs.get(name).unwrap_or_else(|| panic!("struct {name} not in the object's BTF"));
        assert_eq!(c, &rust, "struct {name}: the C layout (left) and the Rust mirror (right) differ");
    }
}
