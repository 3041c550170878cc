-- :x
SELECT /* /* :y */ */ a[:lo:3], x::text