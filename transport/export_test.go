package transport

import "net"

// RawStream opens a stream without sending a call frame (tests only).
func RawStream(s *Session) (net.Conn, error) { return s.ys.OpenStream() }
