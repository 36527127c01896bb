"""Protocol gateways: OPC UA, Modbus TCP and MQTT sources of columnar reading batches."""
