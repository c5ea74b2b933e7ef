"""Generated protobuf and gRPC code for kairos.v1 (`make proto`). Do not edit."""
