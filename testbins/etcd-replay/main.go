// Command etcdsnap-replay rolls a restored etcd database forward through captured revisions
// with etcd's own storage code: the mvcc store, its bbolt backend and the lessor of the pinned
// etcd release, on the database file itself. No etcd runs: no raft, no gRPC, no WAL. It is
// etcdsnap's direct replay engine (crates/etcdsnap/src/pitr/replay/direct.rs starts it).
//
//	etcdsnap-replay --db <data-dir>/member/snap/db --base-revision R [--batch-limit N]
//
// The database is one that `etcdutl snapshot restore` wrote from the base snapshot; it must be
// at revision R. The captured revisions then come on stdin, as frames, and every one is
// applied as one mvcc write transaction holding exactly its events, in order: puts (with their
// lease) and single-key deletes. etcd numbers such a transaction as it numbered the live one,
// so create and mod revisions and versions come out as they were. The backend commits every
// --batch-limit writes (and once a second), without fsync: the result is scratch until etcdsnap
// has made it a snapshot file and restored that with etcdutl.
//
// Proof, for every revision, before anything is committed for it:
//
//   - the store is at the revision before it;
//   - each event's key, just before the event, is in the state the capture recorded (its
//     previous state digest, or absent), where one was recorded;
//   - each put leaves its key with exactly the captured create revision, mod revision, version
//     and lease, and each delete removes exactly its one key.
//
// Input: frames of a little-endian u32 length and that many bytes, whose first byte says what
// the frame is. Integers are little-endian; byte strings are a u32 length and the bytes.
//
//	'G' grant:    i64 lease ID, i64 TTL in seconds, u8 observed (1: the TTL is the capture's)
//	              The lease is granted unless the database holds it already.
//	'R' revision: i64 revision, u32 event count, then each event:
//	              u8 kind (0 put, 1 delete), key, value, i64 create revision,
//	              i64 mod revision, i64 version, i64 lease,
//	              u8 previous state (0 not captured, 1 absent, 2 present + 8 bytes of digest)
//	'E' end:      i64 target revision. The store must be at it; its HashKV is computed, the
//	              database committed and closed.
//
// Output on stdout, one JSON object a line: {"kind":"ready","revision":R} once the database is
// open, then either {"kind":"done",...} (revision, hash, compact_revision and counts) or
// {"kind":"error","error":TYPE,...} naming the revision, with TYPE one of base, input,
// diverged, result, drift, lease, hash. The exit status is 0 after done, 1 after an error.
//
// The previous state digest is etcdsnap's PrevDigest (crates/etcdsnap-storage/src/pitr/segment.rs):
// the first 8 bytes of SHA-256 over "etcdsnap key-value state 1\n", then create revision, mod
// revision, version and lease as little-endian i64, then the value.
package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/coreos/go-semver/semver"
	"go.uber.org/zap"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/pkg/v3/traceutil"
	"go.etcd.io/etcd/server/v3/lease"
	"go.etcd.io/etcd/server/v3/storage/backend"
	"go.etcd.io/etcd/server/v3/storage/mvcc"
)

const (
	frameGrant    = 'G'
	frameRevision = 'R'
	frameEnd      = 'E'
	// The largest frame accepted: above any revision etcd accepts (its request limit is 2 GiB).
	maxFrame = 1 << 31
	// etcd's own minimum lease TTL with its default election timeout (10 ticks of 100 ms):
	// ceil(1.5 * 10 * 100 ms) = 2 s. A shorter TTL is granted as this, as etcd would.
	minLeaseTTL = 2

	prevNotCaptured = 0
	prevAbsent      = 1
	prevPresent     = 2
)

// failure is a typed error, written as one "error" line.
type failure struct {
	Kind     string `json:"kind"`
	Error    string `json:"error"`
	Revision int64  `json:"revision"`
	// The key, hex-encoded, when one is concerned.
	Key      string `json:"key,omitempty"`
	Expected string `json:"expected,omitempty"`
	Found    string `json:"found,omitempty"`
	Message  string `json:"message,omitempty"`
}

type done struct {
	Kind             string `json:"kind"`
	Revision         int64  `json:"revision"`
	Hash             uint32 `json:"hash"`
	CompactRevision  int64  `json:"compact_revision"`
	Revisions        uint64 `json:"revisions"`
	Events           uint64 `json:"events"`
	Proven           uint64 `json:"proven"`
	LeasesGranted    uint64 `json:"leases_granted"`
	LeasesUnobserved uint64 `json:"leases_unobserved"`
}

type event struct {
	put                         bool
	key, value                  []byte
	create, mod, version, lease int64
	prev                        byte
	digest                      [8]byte
}

// A lessor's view of the cluster: only a primary lessor asks it anything, and this one never
// becomes primary (so no lease runs out during the replay).
type fixedVersion struct{}

func (fixedVersion) Version() *semver.Version { return semver.New("3.6.0") }

func main() {
	os.Exit(run())
}

func run() int {
	db := flag.String("db", "", "the bbolt database to roll forward (member/snap/db of a restored data directory)")
	base := flag.Int64("base-revision", 0, "the revision the database must be at")
	batch := flag.Int("batch-limit", 10000, "writes between two commits of the backend")
	flag.Parse()
	out := json.NewEncoder(os.Stdout)
	fail := func(f failure) int {
		f.Kind = "error"
		_ = out.Encode(f)
		return 1
	}
	if *db == "" || *base <= 0 {
		return fail(failure{Error: "input", Message: "--db and --base-revision are required"})
	}
	if st, err := os.Stat(*db); err != nil || !st.Mode().IsRegular() {
		return fail(failure{Error: "input", Message: fmt.Sprintf("no database at %s", *db)})
	}
	lg := zap.NewNop()
	bcfg := backend.DefaultBackendConfig(lg)
	bcfg.Path = *db
	bcfg.BatchLimit = *batch
	bcfg.BatchInterval = time.Second
	bcfg.UnsafeNoFsync = true
	be := backend.New(bcfg)
	le := lease.NewLessor(lg, be, fixedVersion{}, lease.LessorConfig{MinLeaseTTL: minLeaseTTL})
	s := mvcc.NewStore(lg, be, le, mvcc.StoreConfig{})
	if rev := s.Rev(); rev != *base {
		return fail(failure{Error: "base", Revision: *base, Found: fmt.Sprint(rev)})
	}
	_ = out.Encode(map[string]any{"kind": "ready", "revision": *base})

	in := &frames{r: bufio.NewReaderSize(os.Stdin, 1<<20)}
	d := done{Kind: "done"}
	for {
		body, err := in.next()
		if err != nil {
			return fail(failure{Error: "input", Revision: s.Rev() + 1, Message: err.Error()})
		}
		c := &cursor{b: body[1:]}
		switch body[0] {
		case frameGrant:
			id, ttl, observed := c.i64(), c.i64(), c.u8()
			if c.err != nil {
				return fail(failure{Error: "input", Revision: s.Rev() + 1, Message: c.err.Error()})
			}
			if le.Lookup(lease.LeaseID(id)) != nil {
				continue
			}
			if _, err := le.Grant(lease.LeaseID(id), ttl); err != nil {
				return fail(failure{Error: "lease", Revision: s.Rev() + 1, Found: fmt.Sprintf("%x", id), Message: err.Error()})
			}
			d.LeasesGranted++
			if observed == 0 {
				d.LeasesUnobserved++
			}
		case frameRevision:
			rev, events := decodeRevision(c)
			if c.err != nil {
				return fail(failure{Error: "input", Revision: rev, Message: c.err.Error()})
			}
			proven, f := apply(s, le, rev, events)
			if f != nil {
				return fail(*f)
			}
			d.Revisions++
			d.Events += uint64(len(events))
			d.Proven += proven
		case frameEnd:
			target := c.i64()
			if c.err != nil {
				return fail(failure{Error: "input", Message: c.err.Error()})
			}
			if rev := s.Rev(); rev != target {
				return fail(failure{Error: "drift", Revision: target, Found: fmt.Sprint(rev)})
			}
			s.Commit()
			h, _, err := s.HashStorage().HashByRev(target)
			if err != nil {
				return fail(failure{Error: "hash", Revision: target, Message: err.Error()})
			}
			d.Revision, d.Hash, d.CompactRevision = target, h.Hash, h.CompactRevision
			le.Stop()
			if err := s.Close(); err != nil {
				return fail(failure{Error: "hash", Revision: target, Message: err.Error()})
			}
			if err := be.Close(); err != nil {
				return fail(failure{Error: "hash", Revision: target, Message: "closing the database: " + err.Error()})
			}
			_ = out.Encode(d)
			return 0
		default:
			return fail(failure{Error: "input", Revision: s.Rev() + 1, Message: fmt.Sprintf("unknown frame type %d", body[0])})
		}
	}
}

// kvStore is what apply needs of mvcc's store.
type kvStore interface {
	Write(trace *traceutil.Trace) mvcc.TxnWrite
}

// apply makes revision rev of events in one write transaction; the number of events whose
// previous state was compared.
func apply(s kvStore, le lease.Lessor, rev int64, events []event) (uint64, *failure) {
	tw := s.Write(traceutil.TODO())
	defer tw.End()
	if tw.Rev() != rev-1 {
		return 0, &failure{Error: "drift", Revision: rev, Found: fmt.Sprint(tw.Rev())}
	}
	var proven uint64
	for _, ev := range events {
		if ev.mod != rev {
			return 0, &failure{Error: "input", Revision: rev, Key: hex.EncodeToString(ev.key), Message: fmt.Sprintf("an event of mod revision %d", ev.mod)}
		}
		if ev.prev != prevNotCaptured {
			rr, err := tw.Range(context.Background(), ev.key, nil, mvcc.RangeOptions{})
			if err != nil {
				return 0, &failure{Error: "result", Revision: rev, Key: hex.EncodeToString(ev.key), Message: err.Error()}
			}
			var found *mvccpb.KeyValue
			if len(rr.KVs) > 0 {
				found = &rr.KVs[0]
			}
			if f := checkPrev(rev, ev, found); f != nil {
				return 0, f
			}
			proven++
		}
		if !ev.put {
			if n, _ := tw.DeleteRange(ev.key, nil); n != 1 {
				return 0, &failure{Error: "result", Revision: rev, Key: hex.EncodeToString(ev.key), Expected: "deleted", Found: "absent"}
			}
			continue
		}
		if ev.lease != 0 && le.Lookup(lease.LeaseID(ev.lease)) == nil {
			return 0, &failure{Error: "lease", Revision: rev, Found: fmt.Sprintf("%x", ev.lease), Message: "the lease was not granted before the put attached to it"}
		}
		tw.Put(ev.key, ev.value, lease.LeaseID(ev.lease))
	}
	changes := tw.Changes()
	if len(changes) != len(events) {
		return 0, &failure{Error: "result", Revision: rev, Message: fmt.Sprintf("%d changes for %d events", len(changes), len(events))}
	}
	for i, ev := range events {
		c := &changes[i]
		if !bytes.Equal(c.Key, ev.key) {
			return 0, &failure{Error: "result", Revision: rev, Key: hex.EncodeToString(ev.key), Found: "key " + hex.EncodeToString(c.Key)}
		}
		if !ev.put {
			continue
		}
		if c.CreateRevision != ev.create || c.ModRevision != ev.mod || c.Version != ev.version || c.Lease != ev.lease {
			return 0, &failure{
				Error: "result", Revision: rev, Key: hex.EncodeToString(ev.key),
				Expected: describe(ev.create, ev.mod, ev.version, ev.lease),
				Found:    describe(c.CreateRevision, c.ModRevision, c.Version, c.Lease),
			}
		}
	}
	return proven, nil
}

func describe(create, mod, version, lease int64) string {
	return fmt.Sprintf("create revision %d, mod revision %d, version %d, lease %x", create, mod, version, lease)
}

// checkPrev compares the key's state before the event with the captured one.
func checkPrev(rev int64, ev event, found *mvccpb.KeyValue) *failure {
	var expected string
	switch {
	case ev.prev == prevAbsent && found == nil:
		return nil
	case ev.prev == prevPresent && found != nil && digest(found) == ev.digest:
		return nil
	case ev.prev == prevPresent:
		expected = fmt.Sprintf("present (state digest %s)", hex.EncodeToString(ev.digest[:]))
	default:
		expected = "absent"
	}
	f := &failure{Error: "diverged", Revision: rev, Key: hex.EncodeToString(ev.key), Expected: expected, Found: "absent"}
	if found != nil {
		d := digest(found)
		f.Found = fmt.Sprintf("present (%s; state digest %s)", describe(found.CreateRevision, found.ModRevision, found.Version, found.Lease), hex.EncodeToString(d[:]))
	}
	return f
}

// digest is etcdsnap's PrevDigest of a key-value state.
func digest(kv *mvccpb.KeyValue) [8]byte {
	h := sha256.New()
	h.Write([]byte("etcdsnap key-value state 1\n"))
	var n [8]byte
	for _, v := range []int64{kv.CreateRevision, kv.ModRevision, kv.Version, kv.Lease} {
		binary.LittleEndian.PutUint64(n[:], uint64(v))
		h.Write(n[:])
	}
	h.Write(kv.Value)
	var out [8]byte
	copy(out[:], h.Sum(nil))
	return out
}

func decodeRevision(c *cursor) (int64, []event) {
	rev := c.i64()
	count := c.u32()
	if c.err != nil {
		return rev, nil
	}
	// Every event takes at least 46 bytes: never trust a count the frame cannot hold.
	if uint64(count)*46 > uint64(len(c.b)) {
		c.err = fmt.Errorf("%d events do not fit in %d bytes", count, len(c.b))
		return rev, nil
	}
	events := make([]event, count)
	for i := range events {
		e := &events[i]
		switch c.u8() {
		case 0:
			e.put = true
		case 1:
		default:
			c.fail("an event of unknown kind")
		}
		e.key, e.value = c.bytes(), c.bytes()
		e.create, e.mod, e.version, e.lease = c.i64(), c.i64(), c.i64(), c.i64()
		e.prev = c.u8()
		switch e.prev {
		case prevNotCaptured, prevAbsent:
		case prevPresent:
			copy(e.digest[:], c.take(8))
		default:
			c.fail("an unknown previous state")
		}
	}
	if c.err == nil && len(c.b) != 0 {
		c.fail(fmt.Sprintf("%d bytes after the events", len(c.b)))
	}
	return rev, events
}

// frames reads length-prefixed frames.
type frames struct {
	r   *bufio.Reader
	buf []byte
}

func (f *frames) next() ([]byte, error) {
	var head [4]byte
	if _, err := io.ReadFull(f.r, head[:]); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, errors.New("the input ended before its end frame")
		}
		return nil, err
	}
	n := binary.LittleEndian.Uint32(head[:])
	if n == 0 || uint64(n) > maxFrame {
		return nil, fmt.Errorf("a frame of %d bytes", n)
	}
	if cap(f.buf) < int(n) {
		f.buf = make([]byte, n)
	}
	f.buf = f.buf[:n]
	if _, err := io.ReadFull(f.r, f.buf); err != nil {
		return nil, fmt.Errorf("a frame cut short: %w", err)
	}
	return f.buf, nil
}

// cursor decodes a frame; the first error sticks and every later read gives zero.
type cursor struct {
	b   []byte
	err error
}

func (c *cursor) fail(what string) {
	if c.err == nil {
		c.err = errors.New(what)
	}
}

func (c *cursor) take(n int) []byte {
	if c.err != nil || n > len(c.b) {
		c.fail("a frame cut short")
		return nil
	}
	out := c.b[:n:n]
	c.b = c.b[n:]
	return out
}

func (c *cursor) u8() byte {
	if b := c.take(1); b != nil {
		return b[0]
	}
	return 0
}

func (c *cursor) u32() uint32 {
	if b := c.take(4); b != nil {
		return binary.LittleEndian.Uint32(b)
	}
	return 0
}

func (c *cursor) i64() int64 {
	if b := c.take(8); b != nil {
		return int64(binary.LittleEndian.Uint64(b))
	}
	return 0
}

// bytes copies: the frame's buffer is reused for the next frame, and mvcc's index keeps keys.
func (c *cursor) bytes() []byte {
	n := c.u32()
	b := c.take(int(n))
	if b == nil {
		return nil
	}
	return append([]byte(nil), b...)
}
