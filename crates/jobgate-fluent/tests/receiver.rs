//! The test receiver itself, fed by hand-made messages: Message mode with
//! an integer time, a heartbeat, and restarts on the same port.

use std::time::Duration;

use jobgate_testkit::{ForwardMode, ForwardReceiver};
use rmpv::Value as Msgpack;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn encode(value: &Msgpack) -> Vec<u8> {
    let mut bytes = Vec::new();
    rmpv::encode::write_value(&mut bytes, value).expect("encode");
    bytes
}

#[tokio::test]
async fn decodes_message_mode_and_acks_its_chunk() {
    let receiver = ForwardReceiver::start().await;
    let mut stream = TcpStream::connect(receiver.address())
        .await
        .expect("connect");
    let record = Msgpack::Map(vec![(Msgpack::from("message"), Msgpack::from("hi"))]);
    let option = Msgpack::Map(vec![(Msgpack::from("chunk"), Msgpack::from("cA=="))]);
    let mut bytes = encode(&Msgpack::Nil); // a heartbeat first
    bytes.extend(encode(&Msgpack::Array(vec![
        Msgpack::from("app.web"),
        Msgpack::from(1_700_000_000u64),
        record,
        option,
    ])));
    stream.write_all(&bytes).await.expect("write");

    let mut response = vec![0; 64];
    let read = stream.read(&mut response).await.expect("read");
    let ack = rmpv::decode::read_value(&mut &response[..read]).expect("msgpack");
    assert_eq!(
        ack,
        Msgpack::Map(vec![(Msgpack::from("ack"), Msgpack::from("cA=="))])
    );
    let records = receiver.wait_for_records(1, Duration::from_secs(5)).await;
    assert_eq!(records[0].tag, "app.web");
    assert_eq!(records[0].time.seconds, 1_700_000_000);
    assert!(!records[0].time.event_time);
    assert_eq!(records[0].record["message"], "hi");
    assert_eq!(receiver.messages()[0].mode, ForwardMode::Message);
}

#[tokio::test]
async fn stops_and_restarts_on_the_same_port() {
    let mut receiver = ForwardReceiver::start().await;
    let port = receiver.port();
    let open = TcpStream::connect(receiver.address())
        .await
        .expect("connect");
    receiver.stop().await;
    assert!(TcpStream::connect(receiver.address()).await.is_err());
    // The open connection was closed too.
    let mut open = open;
    let mut byte = [0; 1];
    assert_eq!(open.read(&mut byte).await.unwrap_or(0), 0);
    receiver.restart().await;
    assert_eq!(receiver.port(), port);
    assert!(TcpStream::connect(receiver.address()).await.is_ok());
}
