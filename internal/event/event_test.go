package event

import (
	"testing"

	"github.com/stretchr/testify/require"
)

func TestDataRoundTripAndBounds(t *testing.T) {
	ev := CaptureDataEvent{Type: TypeData, Direction: 1, Pid: 7, Fd: 3, ConnId: 11, Seq: 100, TotalLen: 5}
	raw := EncodeData(&ev, []byte("hello"))
	got, payload, err := Data(raw)
	require.NoError(t, err)
	require.Equal(t, "hello", string(payload))
	require.Equal(t, uint64(100), got.Seq)
	require.Equal(t, uint32(7), got.Pid)

	tests := []struct {
		name string
		raw  func() []byte
		want error
	}{
		{"short", func() []byte { return raw[:DataHeaderLen-1] }, ErrShort},
		{"wrong type", func() []byte { r := append([]byte(nil), raw...); r[0] = TypeConnOpen; return r }, ErrUnknownType},
		{"cap_len beyond record", func() []byte { return raw[:DataHeaderLen+2] }, ErrBadLength},
		{"offset beyond total", func() []byte {
			e := ev
			e.Offset = 4
			return EncodeData(&e, []byte("hello"))
		}, ErrBadLength},
		{"bad direction", func() []byte {
			e := ev
			e.Direction = 9
			return EncodeData(&e, []byte("hello"))
		}, ErrBadLength},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, _, err := Data(tt.raw())
			require.ErrorIs(t, err, tt.want)
		})
	}
}

func TestUnalignedRecordIsCopied(t *testing.T) {
	ev := CaptureDataEvent{Type: TypeData, Direction: 2, TotalLen: 3}
	raw := EncodeData(&ev, []byte("abc"))
	buf := append([]byte{0}, raw...)
	_, payload, err := Data(buf[1:])
	require.NoError(t, err)
	require.Equal(t, "abc", string(payload))
}

func TestConnAndEndpoints(t *testing.T) {
	ev := CaptureConnEvent{Type: TypeConnOpen, Role: 1, ConnId: 5}
	ev.Tuple.Family = AFInet6
	ev.Tuple.Saddr[15] = 1
	ev.Tuple.Daddr = [16]byte{10: 0xff, 11: 0xff, 12: 10, 13: 0, 14: 0, 15: 9}
	ev.Tuple.Sport, ev.Tuple.Dport = 1234, 443
	got, err := Conn(EncodeConn(&ev))
	require.NoError(t, err)
	l, r := Endpoints(got.Tuple.Family, &got.Tuple.Saddr, &got.Tuple.Daddr, got.Tuple.Sport, got.Tuple.Dport)
	require.Equal(t, "[::1]:1234", l.String())
	require.Equal(t, "10.0.0.9:443", r.String(), "v4-mapped addresses are unmapped")
	_, err = Conn([]byte{TypeConnOpen})
	require.ErrorIs(t, err, ErrShort)
	require.Equal(t, "ab", CString([]int8{'a', 'b', 0, 'c'}))
}

func FuzzDecode(f *testing.F) {
	f.Add(EncodeData(&CaptureDataEvent{Type: TypeData, Direction: 1, TotalLen: 2}, []byte("hi")))
	f.Add(EncodeConn(&CaptureConnEvent{Type: TypeConnClose}))
	f.Fuzz(func(t *testing.T, raw []byte) {
		switch Type(raw) {
		case TypeData:
			ev, payload, err := Data(raw)
			if err == nil && (int(ev.CapLen) != len(payload) || ev.Offset+ev.CapLen > ev.TotalLen) {
				t.Fatalf("accepted inconsistent record")
			}
		case TypeConnOpen, TypeConnClose:
			_, _ = Conn(raw)
		}
	})
}
