package sqlsan

// kw identifies the keywords the analysis treats specially.
type kw uint8

const (
	kwNone kw = iota
	kwOther
	kwSelect
	kwInsert
	kwUpdate
	kwDelete
	kwMerge
	kwFrom
	kwJoin
	kwInto
	kwUsing
	kwOnly
	kwLateral
	kwAs
	kwWith
	kwRecursive
	kwNot
	kwMaterialized
	kwTable
	kwCreate
	kwDrop
	kwAlter
	kwTruncate
	kwCopy
	kwIn
	kwArray
	kwTrue
	kwFalse
	kwFor
	kwDo
	kwKey
	kwIf
	kwExists
	kwOn
	kwIndex
	kwView
	kwForeign
	kwSequence
	kwExplain
	kwAnalyze
	kwVerbose
	kwLock
	kwValues
	kwStatement // a keyword that starts a statement and names its operation
	kwObject    // an object type after CREATE/DROP/ALTER (FUNCTION, SCHEMA, ...)
	kwModifier  // a modifier between CREATE and the object type
)

// kwInfo is what the lexer records about an identifier token.
type kwInfo struct {
	// name is the keyword in upper case ("" for a plain identifier).
	name string
	id   kw
	// expr: an expression may follow (so a following minus is a sign).
	expr bool
	// reserved: cannot be a table alias.
	reserved bool
}

// keywords maps upper-case keywords to their roles. Identifiers not listed
// are plain names.
var keywords = map[string]kwInfo{
	"SELECT":       {id: kwSelect, expr: true, reserved: true},
	"INSERT":       {id: kwInsert, expr: false, reserved: true},
	"UPDATE":       {id: kwUpdate, expr: false, reserved: true},
	"DELETE":       {id: kwDelete, expr: false, reserved: true},
	"MERGE":        {id: kwMerge, expr: false, reserved: true},
	"FROM":         {id: kwFrom, expr: true, reserved: true},
	"JOIN":         {id: kwJoin, expr: false, reserved: true},
	"INTO":         {id: kwInto, expr: true, reserved: true},
	"USING":        {id: kwUsing, expr: true, reserved: true},
	"ONLY":         {id: kwOnly, expr: false, reserved: true},
	"LATERAL":      {id: kwLateral, expr: false, reserved: true},
	"AS":           {id: kwAs, expr: true, reserved: true},
	"WITH":         {id: kwWith, expr: true, reserved: true},
	"RECURSIVE":    {id: kwRecursive, expr: false, reserved: true},
	"NOT":          {id: kwNot, expr: true, reserved: true},
	"MATERIALIZED": {id: kwMaterialized, expr: false, reserved: false},
	"TABLE":        {id: kwTable, expr: false, reserved: true},
	"CREATE":       {id: kwCreate, expr: false, reserved: true},
	"DROP":         {id: kwDrop, expr: false, reserved: true},
	"ALTER":        {id: kwAlter, expr: false, reserved: true},
	"TRUNCATE":     {id: kwTruncate, expr: false, reserved: true},
	"COPY":         {id: kwCopy, expr: false, reserved: true},
	"IN":           {id: kwIn, expr: true, reserved: true},
	"ARRAY":        {id: kwArray, expr: true, reserved: true},
	"TRUE":         {id: kwTrue, expr: false, reserved: true},
	"FALSE":        {id: kwFalse, expr: false, reserved: true},
	"FOR":          {id: kwFor, expr: true, reserved: true},
	"DO":           {id: kwDo, expr: false, reserved: true},
	"KEY":          {id: kwKey, expr: false, reserved: false},
	"IF":           {id: kwIf, expr: false, reserved: false},
	"EXISTS":       {id: kwExists, expr: true, reserved: true},
	"ON":           {id: kwOn, expr: true, reserved: true},
	"INDEX":        {id: kwIndex, expr: false, reserved: false},
	"VIEW":         {id: kwView, expr: false, reserved: false},
	"FOREIGN":      {id: kwForeign, expr: false, reserved: true},
	"SEQUENCE":     {id: kwSequence, expr: false, reserved: false},
	"EXPLAIN":      {id: kwExplain, expr: false, reserved: true},
	"ANALYZE":      {id: kwAnalyze, expr: false, reserved: true},
	"ANALYSE":      {id: kwAnalyze, expr: false, reserved: true},
	"VERBOSE":      {id: kwVerbose, expr: false, reserved: true},
	"LOCK":         {id: kwLock, expr: false, reserved: true},
	"VALUES":       {id: kwValues, expr: true, reserved: true},

	// Statements whose operation is their first keyword.
	"BEGIN":      {id: kwStatement, expr: false, reserved: true},
	"START":      {id: kwStatement, expr: false, reserved: false},
	"COMMIT":     {id: kwStatement, expr: false, reserved: true},
	"END":        {id: kwStatement, expr: false, reserved: true},
	"ROLLBACK":   {id: kwStatement, expr: false, reserved: true},
	"ABORT":      {id: kwStatement, expr: false, reserved: false},
	"SAVEPOINT":  {id: kwStatement, expr: false, reserved: false},
	"RELEASE":    {id: kwStatement, expr: false, reserved: false},
	"SET":        {id: kwStatement, expr: true, reserved: true},
	"RESET":      {id: kwStatement, expr: false, reserved: false},
	"SHOW":       {id: kwStatement, expr: false, reserved: false},
	"VACUUM":     {id: kwStatement, expr: false, reserved: true},
	"LISTEN":     {id: kwStatement, expr: false, reserved: false},
	"NOTIFY":     {id: kwStatement, expr: false, reserved: false},
	"UNLISTEN":   {id: kwStatement, expr: false, reserved: false},
	"DECLARE":    {id: kwStatement, expr: false, reserved: false},
	"FETCH":      {id: kwStatement, expr: true, reserved: true},
	"MOVE":       {id: kwStatement, expr: false, reserved: false},
	"CLOSE":      {id: kwStatement, expr: false, reserved: false},
	"GRANT":      {id: kwStatement, expr: false, reserved: true},
	"REVOKE":     {id: kwStatement, expr: false, reserved: false},
	"CALL":       {id: kwStatement, expr: false, reserved: false},
	"PREPARE":    {id: kwStatement, expr: false, reserved: false},
	"EXECUTE":    {id: kwStatement, expr: false, reserved: false},
	"DEALLOCATE": {id: kwStatement, expr: false, reserved: false},
	"DISCARD":    {id: kwStatement, expr: false, reserved: false},
	"CHECKPOINT": {id: kwStatement, expr: false, reserved: false},
	"REINDEX":    {id: kwStatement, expr: false, reserved: false},
	"CLUSTER":    {id: kwStatement, expr: false, reserved: false},
	"COMMENT":    {id: kwStatement, expr: false, reserved: false},
	"REFRESH":    {id: kwStatement, expr: false, reserved: false},
	"SECURITY":   {id: kwStatement, expr: false, reserved: false},
	"IMPORT":     {id: kwStatement, expr: false, reserved: false},
	"LOAD":       {id: kwStatement, expr: false, reserved: false},

	// Object types named after CREATE, DROP and ALTER.
	"SCHEMA":       {id: kwObject, expr: false, reserved: false},
	"DATABASE":     {id: kwObject, expr: false, reserved: false},
	"FUNCTION":     {id: kwObject, expr: false, reserved: false},
	"PROCEDURE":    {id: kwObject, expr: false, reserved: false},
	"TRIGGER":      {id: kwObject, expr: false, reserved: false},
	"TYPE":         {id: kwObject, expr: false, reserved: false},
	"EXTENSION":    {id: kwObject, expr: false, reserved: false},
	"ROLE":         {id: kwObject, expr: false, reserved: false},
	"USER":         {id: kwObject, expr: false, reserved: true},
	"DOMAIN":       {id: kwObject, expr: false, reserved: false},
	"POLICY":       {id: kwObject, expr: false, reserved: false},
	"RULE":         {id: kwObject, expr: false, reserved: false},
	"AGGREGATE":    {id: kwObject, expr: false, reserved: false},
	"OPERATOR":     {id: kwObject, expr: false, reserved: false},
	"COLLATION":    {id: kwObject, expr: false, reserved: false},
	"PUBLICATION":  {id: kwObject, expr: false, reserved: false},
	"SUBSCRIPTION": {id: kwObject, expr: false, reserved: false},
	"SERVER":       {id: kwObject, expr: false, reserved: false},
	"TABLESPACE":   {id: kwObject, expr: false, reserved: false},
	"STATISTICS":   {id: kwObject, expr: false, reserved: false},

	// Modifiers that may stand between CREATE and the object type.
	"OR":           {id: kwModifier, expr: true, reserved: true},
	"REPLACE":      {id: kwModifier, expr: false, reserved: false},
	"TEMP":         {id: kwModifier, expr: false, reserved: false},
	"TEMPORARY":    {id: kwModifier, expr: false, reserved: false},
	"UNLOGGED":     {id: kwModifier, expr: false, reserved: false},
	"GLOBAL":       {id: kwModifier, expr: false, reserved: false},
	"LOCAL":        {id: kwModifier, expr: false, reserved: false},
	"UNIQUE":       {id: kwModifier, expr: false, reserved: true},
	"CONCURRENTLY": {id: kwModifier, expr: false, reserved: true},

	// Other keywords: they introduce an expression, or end a table
	// reference (so they are not taken for an alias).
	"WHERE":       {id: kwOther, expr: true, reserved: true},
	"AND":         {id: kwOther, expr: true, reserved: true},
	"WHEN":        {id: kwOther, expr: true, reserved: true},
	"THEN":        {id: kwOther, expr: true, reserved: true},
	"ELSE":        {id: kwOther, expr: true, reserved: true},
	"RETURN":      {id: kwOther, expr: true, reserved: false},
	"RETURNING":   {id: kwOther, expr: true, reserved: true},
	"LIMIT":       {id: kwOther, expr: true, reserved: true},
	"OFFSET":      {id: kwOther, expr: true, reserved: true},
	"BETWEEN":     {id: kwOther, expr: true, reserved: false},
	"IS":          {id: kwOther, expr: true, reserved: true},
	"LIKE":        {id: kwOther, expr: true, reserved: true},
	"ILIKE":       {id: kwOther, expr: true, reserved: true},
	"SIMILAR":     {id: kwOther, expr: true, reserved: true},
	"BY":          {id: kwOther, expr: true, reserved: false},
	"HAVING":      {id: kwOther, expr: true, reserved: true},
	"DISTINCT":    {id: kwOther, expr: true, reserved: true},
	"ALL":         {id: kwOther, expr: true, reserved: true},
	"ANY":         {id: kwOther, expr: true, reserved: true},
	"SOME":        {id: kwOther, expr: true, reserved: true},
	"FIRST":       {id: kwOther, expr: true, reserved: false},
	"NEXT":        {id: kwOther, expr: true, reserved: false},
	"TO":          {id: kwOther, expr: true, reserved: true},
	"DEFAULT":     {id: kwOther, expr: true, reserved: true},
	"ESCAPE":      {id: kwOther, expr: true, reserved: false},
	"CASE":        {id: kwOther, expr: true, reserved: true},
	"INTERVAL":    {id: kwOther, expr: true, reserved: false},
	"ROW":         {id: kwOther, expr: true, reserved: false},
	"UNION":       {id: kwOther, expr: true, reserved: true},
	"EXCEPT":      {id: kwOther, expr: true, reserved: true},
	"INTERSECT":   {id: kwOther, expr: true, reserved: true},
	"LEFT":        {id: kwOther, expr: false, reserved: true},
	"RIGHT":       {id: kwOther, expr: false, reserved: true},
	"INNER":       {id: kwOther, expr: false, reserved: true},
	"OUTER":       {id: kwOther, expr: false, reserved: true},
	"FULL":        {id: kwOther, expr: false, reserved: true},
	"CROSS":       {id: kwOther, expr: false, reserved: true},
	"NATURAL":     {id: kwOther, expr: false, reserved: true},
	"GROUP":       {id: kwOther, expr: false, reserved: true},
	"ORDER":       {id: kwOther, expr: false, reserved: true},
	"WINDOW":      {id: kwOther, expr: false, reserved: true},
	"TABLESAMPLE": {id: kwOther, expr: false, reserved: true},
	"NULL":        {id: kwOther, expr: false, reserved: true},
	"CONFLICT":    {id: kwOther, expr: false, reserved: false},
	"NOTHING":     {id: kwOther, expr: false, reserved: false},
}

func init() {
	for k, v := range keywords {
		v.name = k
		keywords[k] = v
	}
}

// lookupKeyword classifies an unquoted identifier, case-insensitively,
// without allocating.
func lookupKeyword(w string) kwInfo {
	if len(w) > 16 {
		return kwInfo{}
	}
	var buf [16]byte
	for i := 0; i < len(w); i++ {
		c := w[i]
		if c >= 'a' && c <= 'z' {
			c -= 'a' - 'A'
		} else if c >= 0x80 {
			return kwInfo{}
		}
		buf[i] = c
	}
	return keywords[string(buf[:len(w)])]
}
