package health

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// The messages of grpc.health.v1 (grpc/health/v1/health.proto), encoded
// and decoded by hand: a check's request is one string field, its answer
// one enum field. Tests check them against the grpc-go health server.

// ServingStatus values of grpc.health.v1.HealthCheckResponse.
const (
	servingStatusUnknown        = 0
	servingStatusServing        = 1
	servingStatusNotServing     = 2
	servingStatusServiceUnknown = 3
)

func servingStatusName(s uint64) string {
	switch s {
	case servingStatusUnknown:
		return "UNKNOWN"
	case servingStatusServing:
		return "SERVING"
	case servingStatusNotServing:
		return "NOT_SERVING"
	case servingStatusServiceUnknown:
		return "SERVICE_UNKNOWN"
	}
	return fmt.Sprintf("status %d", s)
}

// healthCheckRequest returns a gRPC message (its 5-byte prefix, then
// HealthCheckRequest{service}).
func healthCheckRequest(service string) []byte {
	var msg []byte
	if service != "" {
		msg = append(msg, 0x0a) // field 1, length-delimited
		msg = binary.AppendUvarint(msg, uint64(len(service)))
		msg = append(msg, service...)
	}
	out := make([]byte, 5, 5+len(msg))
	binary.BigEndian.PutUint32(out[1:], uint32(len(msg)))
	return append(out, msg...)
}

var errBadHealthAnswer = errors.New("malformed health check answer")

// healthCheckStatus decodes a gRPC message holding a HealthCheckResponse
// and returns its status (UNKNOWN if the field is absent, as proto3 has
// it).
func healthCheckStatus(body []byte) (uint64, error) {
	if len(body) < 5 || body[0] != 0 {
		return 0, errBadHealthAnswer // too short, or compressed
	}
	n := binary.BigEndian.Uint32(body[1:5])
	msg := body[5:]
	if uint64(len(msg)) != uint64(n) {
		return 0, errBadHealthAnswer
	}
	var status uint64
	for len(msg) > 0 {
		key, k := binary.Uvarint(msg)
		if k <= 0 {
			return 0, errBadHealthAnswer
		}
		msg = msg[k:]
		switch key & 7 {
		case 0: // varint
			v, k := binary.Uvarint(msg)
			if k <= 0 {
				return 0, errBadHealthAnswer
			}
			msg = msg[k:]
			if key>>3 == 1 {
				status = v
			}
		case 2: // length-delimited: skipped
			l, k := binary.Uvarint(msg)
			if k <= 0 || uint64(len(msg)-k) < l {
				return 0, errBadHealthAnswer
			}
			msg = msg[k+int(l):]
		case 1: // 64-bit
			if len(msg) < 8 {
				return 0, errBadHealthAnswer
			}
			msg = msg[8:]
		case 5: // 32-bit
			if len(msg) < 4 {
				return 0, errBadHealthAnswer
			}
			msg = msg[4:]
		default:
			return 0, errBadHealthAnswer
		}
	}
	return status, nil
}
