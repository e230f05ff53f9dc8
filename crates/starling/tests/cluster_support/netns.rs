//! A NATS server in a network namespace of its own, made by the test with
//! `ip netns` and two veth pairs: one carries its clients (its Starling
//! node), the other its routes to the other servers. Taking the route
//! link down cuts the server from the other two while its node stays
//! connected to it: a network partition, without the process stopping.
//!
//! The addresses are private to this machine (10.x.y.0/29, picked from
//! the process id); the servers listen on them instead of 127.0.0.1.
//! Needs root (or CAP_NET_ADMIN): [`Partition::create`] says why not.

use std::process::Command;

/// The namespace, its links and their addresses.
pub struct Partition {
    ns: String,
    client_link: String,
    route_link: String,
    /// The namespaced server's client address.
    pub client_addr: String,
    /// The route addresses: the other servers' side, the namespace's side.
    pub route_host: String,
    pub route_ns: String,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip {}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl Partition {
    /// Makes the namespace and its two links, up.
    pub fn create() -> Result<Partition, String> {
        let pid = std::process::id();
        let tag = format!("{:x}", pid & 0xfffff);
        let (a, b) = (128 + ((pid >> 8) & 0x3f), pid & 0xff);
        let p = Partition {
            ns: format!("stn{tag}"),
            client_link: format!("stc{tag}"),
            route_link: format!("str{tag}"),
            client_addr: format!("10.{a}.{b}.2"),
            route_host: format!("10.{a}.{b}.5"),
            route_ns: format!("10.{a}.{b}.6"),
        };
        // Left by an earlier run of this pid (a crash): gone first.
        let _ = ip(&["netns", "del", &p.ns]);
        let _ = ip(&["link", "del", &p.client_link]);
        let _ = ip(&["link", "del", &p.route_link]);
        ip(&["netns", "add", &p.ns])?;
        // From here on, Drop undoes what was made.
        let (ns, host) = (p.ns.clone(), format!("10.{a}.{b}"));
        let pairs = [
            (&p.client_link, format!("{}n", p.client_link), 1, 2),
            (&p.route_link, format!("{}n", p.route_link), 5, 6),
        ];
        for (outer, inner, h, n) in pairs {
            ip(&["link", "add", outer, "type", "veth", "peer", "name", &inner])?;
            ip(&["link", "set", &inner, "netns", &ns])?;
            ip(&["addr", "add", &format!("{host}.{h}/30"), "dev", outer])?;
            ip(&["link", "set", outer, "up"])?;
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{host}.{n}/30"),
                "dev",
                &inner,
            ])?;
            ip(&["-n", &ns, "link", "set", &inner, "up"])?;
        }
        ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        Ok(p)
    }

    /// `program` to be run inside the namespace.
    pub fn command(&self, program: &std::path::Path) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.ns]).arg(program);
        cmd
    }

    /// Cuts the namespaced server from the other servers (its route link
    /// down); its clients' link stays up.
    pub fn cut(&self) {
        ip(&["link", "set", &self.route_link, "down"]).expect("the route link goes down");
    }

    /// Joins it to the others again.
    pub fn heal(&self) {
        ip(&["link", "set", &self.route_link, "up"]).expect("the route link comes up");
    }
}

impl Drop for Partition {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.ns]);
        let _ = ip(&["link", "del", &self.client_link]);
        let _ = ip(&["link", "del", &self.route_link]);
    }
}
