// Package capfile reads and writes recorded connection byte streams: the
// testdata/*.bin files that parser tests and benchmarks replay.
//
// A file is a sequence of records, each
//
//	direction u8 (1 = egress, 2 = ingress, as stream.Direction)
//	time      u64 little endian, nanoseconds (monotonic, any origin)
//	length    u32 little endian
//	bytes     [length]
//
// in the order the observed process wrote and read them. Egress is what the
// recorded side sent: for a client recording, requests.
package capfile

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/ebpfotel/ebpfreceiver/internal/stream"
)

// Record is one read or write of the recorded side.
type Record struct {
	Dir  stream.Direction
	Time uint64
	Data []byte
}

const headerLen = 1 + 8 + 4

// maxRecord bounds one record so that a corrupt file cannot make Read
// allocate without limit.
const maxRecord = 64 << 20

// Write appends records to w in the capfile format.
func Write(w io.Writer, recs []Record) error {
	var hdr [headerLen]byte
	for _, r := range recs {
		hdr[0] = byte(r.Dir)
		binary.LittleEndian.PutUint64(hdr[1:9], r.Time)
		binary.LittleEndian.PutUint32(hdr[9:13], uint32(len(r.Data)))
		if _, err := w.Write(hdr[:]); err != nil {
			return err
		}
		if _, err := w.Write(r.Data); err != nil {
			return err
		}
	}
	return nil
}

// Read decodes all records of r.
func Read(r io.Reader) ([]Record, error) {
	br := bufio.NewReader(r)
	var recs []Record
	var hdr [headerLen]byte
	for {
		if _, err := io.ReadFull(br, hdr[:]); err != nil {
			if errors.Is(err, io.EOF) {
				return recs, nil
			}
			return nil, fmt.Errorf("capfile: record %d header: %w", len(recs), err)
		}
		dir := stream.Direction(hdr[0])
		if dir != stream.Egress && dir != stream.Ingress {
			return nil, fmt.Errorf("capfile: record %d: bad direction %d", len(recs), hdr[0])
		}
		n := binary.LittleEndian.Uint32(hdr[9:13])
		if n > maxRecord {
			return nil, fmt.Errorf("capfile: record %d: length %d over %d", len(recs), n, maxRecord)
		}
		data := make([]byte, n)
		if _, err := io.ReadFull(br, data); err != nil {
			return nil, fmt.Errorf("capfile: record %d body: %w", len(recs), err)
		}
		recs = append(recs, Record{Dir: dir, Time: binary.LittleEndian.Uint64(hdr[1:9]), Data: data})
	}
}

// ReadFile reads a capfile from disk.
func ReadFile(path string) ([]Record, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return Read(f)
}

// WriteFile writes a capfile to disk.
func WriteFile(path string, recs []Record) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := Write(f, recs); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// Replay feeds recs to p in order, as reassembly would, and closes it.
func Replay(p stream.Parser, recs []Record) {
	var last uint64
	for _, r := range recs {
		p.Data(r.Dir, r.Time, r.Data, 0)
		last = r.Time
	}
	p.Close(last)
}
