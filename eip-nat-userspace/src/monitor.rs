//! Follows the kernel's links, IPv4 routes and neighbours (rtnetlink
//! notifications, as `ip monitor` does) into the programmed next hops, so
//! that a neighbour's new MAC, a changed route or a link going down reaches
//! the datapath within milliseconds (docs/datapath.md, "Next hops").

use futures_channel::mpsc::UnboundedReceiver;
use futures_util::StreamExt;
use netlink_packet_core::{NetlinkMessage, NetlinkPayload};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{AsyncSocket, SocketAddr};
use rtnetlink::{new_multicast_connection, MulticastGroup};

use crate::writer::Writer;

/// Socket receive buffer: a burst of notifications (a link flap with many
/// neighbours) must not overflow it, or a change would be lost.
const RCVBUF: usize = 8 << 20;

/// Subscribes now, so that nothing that changes from here on is missed;
/// returns the task to start once the gateway has read the tables.
pub fn subscribe() -> std::io::Result<Monitor> {
    let (mut conn, _handle, messages) = new_multicast_connection(&[
        MulticastGroup::Link,
        MulticastGroup::Ipv4Route,
        MulticastGroup::Neigh,
    ])?;
    conn.socket_mut().socket_mut().set_rx_buf_sz(RCVBUF)?;
    // Reading starts at once; notifications queue in the channel until
    // the gateway follows them.
    tokio::spawn(conn);
    Ok(Monitor { messages })
}

pub struct Monitor {
    messages: UnboundedReceiver<(NetlinkMessage<RouteNetlinkMessage>, SocketAddr)>,
}

impl Monitor {
    /// Hands every notification to the writer, which applies them in
    /// their turn (after the start's reconcile, for those that queue
    /// meanwhile), until the socket closes or the writer stops.
    pub fn follow(mut self, writer: Writer) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            while let Some((msg, _)) = self.messages.next().await {
                let NetlinkPayload::InnerMessage(m) = msg.payload else {
                    continue;
                };
                if writer.kernel_changed(m).is_err() {
                    return;
                }
            }
            log::error!("the rtnetlink monitor stopped; next hops no longer follow the kernel");
        })
    }
}
