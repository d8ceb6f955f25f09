//! `[[interfaces]]`: named relay interfaces (rtpengine's `interface`), each
//! with one or more local addresses and a port range; ng's `direction`
//! names them. Absent: one interface, `default`, from `[relay]`.

use relay_core::{InterfaceAddress, InterfaceConfig, RelayConfig};
use serde::{Deserialize, Serialize};

/// One `[[interfaces]]` entry.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct InterfaceSection {
    /// Name, as ng's `direction` gives it.
    pub name: String,
    /// Local addresses: `"IP"`, or `"IP!ADVERTISED"` when SDP must name
    /// another address (behind 1:1 NAT), as rtpengine writes it.
    pub addresses: Vec<String>,
    /// First relay port on each address.
    #[serde(default = "default_port_min")]
    pub port_min: u16,
    /// Last relay port on each address.
    #[serde(default = "default_port_max")]
    pub port_max: u16,
}

fn default_port_min() -> u16 {
    RelayConfig::default().port_min
}

fn default_port_max() -> u16 {
    RelayConfig::default().port_max
}

/// Reads the entries; errors are (key, reason).
pub(super) fn interfaces(sections: &[InterfaceSection]) -> Result<Vec<InterfaceConfig>, (String, String)> {
    let mut out = Vec::with_capacity(sections.len());
    for s in sections {
        let key = "interfaces.addresses".to_string();
        if s.addresses.is_empty() {
            return Err((key, format!("interface {:?} needs at least one address", s.name)));
        }
        let mut addresses = Vec::with_capacity(s.addresses.len());
        for a in &s.addresses {
            let (bind, advertised) = match a.split_once('!') {
                Some((b, adv)) => (b, Some(adv)),
                None => (a.as_str(), None),
            };
            let bind = bind
                .trim()
                .parse()
                .map_err(|_| (key.clone(), format!("{a:?} is not an IP address (or IP!ADVERTISED)")))?;
            let advertised = advertised
                .map(|adv| adv.trim().parse())
                .transpose()
                .map_err(|_| (key.clone(), format!("{a:?}: the advertised part is not an IP address")))?;
            addresses.push(InterfaceAddress { bind, advertised });
        }
        out.push(InterfaceConfig { name: s.name.clone(), addresses, port_min: s.port_min, port_max: s.port_max });
    }
    Ok(out)
}
