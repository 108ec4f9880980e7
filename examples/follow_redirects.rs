//! A device that follows server redirection with rumqttc: asks a dispatcher where to go, publishes
//! there, and follows a broker's DISCONNECT 0x9C/0x9D (Server Reference) or a plain drop (back
//! through the dispatcher) with the same client.
//!
//! ```sh
//! mqdispatch broker --listen 127.0.0.1:1884 &
//! mqdispatch dispatcher --listen 127.0.0.1:1883 --broker b1=127.0.0.1:1884 --policy round-robin &
//! cargo run --example follow_redirects -- 127.0.0.1:1883 sensor-17
//! ```

use std::time::Duration;

use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::Packet;
use rumqttc::v5::{Event, MqttOptions};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let dispatcher = args.next().unwrap_or_else(|| "127.0.0.1:1883".into());
    let id = args.next().unwrap_or_else(|| "sensor-17".into());
    let options = move |host: &str, port: u16| {
        let mut o = MqttOptions::new(id.clone(), host, port);
        o.set_keep_alive(Duration::from_secs(30))
            // rumqttc preallocates 65,536 in-flight slots (~14 MB) without a limit.
            .set_outgoing_inflight_upper_limit(100);
        o
    };
    let (client, mut events) =
        mqdispatch::client::connect_following_redirects(&dispatcher, options, 10).await?;
    println!("placed on {}", events.broker());
    tokio::spawn(async move {
        for k in 0u64.. {
            let payload = format!("reading {k}").into_bytes();
            if client
                .publish("sensors/demo", QoS::AtLeastOnce, false, payload)
                .await
                .is_err()
            {
                return;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
    loop {
        match events.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(_))) => println!("connected to {}", events.broker()),
            Ok(_) => {}
            Err(e) => {
                println!("connection ended ({e}); next: {}", events.broker());
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}
