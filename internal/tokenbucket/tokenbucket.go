// Package tokenbucket is the rate limit the servers share: a bucket of
// Burst tokens refilled at Rate a second; each allowed event takes one.
// The API limits device requests per address with it, DHCP the MACs it
// has never seen.
package tokenbucket

import "time"

// Bucket is one bucket. The zero value with Rate and Burst set starts
// full. It is not safe for concurrent use: its owner locks.
type Bucket struct {
	Rate, Burst float64 // tokens a second, and the most it holds

	tokens float64
	at     time.Time
}

// Allow takes a token at now, if there is one.
func (b *Bucket) Allow(now time.Time) bool {
	if b.at.IsZero() {
		b.tokens, b.at = b.Burst, now
	}
	b.tokens = min(b.Burst, b.tokens+now.Sub(b.at).Seconds()*b.Rate)
	b.at = now
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}

// Full reports whether the bucket has been idle long enough at now to be
// full again (a holder of many buckets may drop it).
func (b *Bucket) Full(now time.Time) bool {
	return b.at.IsZero() || b.tokens+now.Sub(b.at).Seconds()*b.Rate >= b.Burst
}
